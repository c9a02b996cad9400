//! Headless Chromium (Debian `chromium`) driven over the DevTools protocol,
//! for tests that use a page as a person does: load it, type into its
//! fields, click its buttons (real mouse events at the element's place on
//! the screen, so a hidden or covered button cannot be clicked), read what
//! it shows, and take screenshots. Errors on the page's console, uncaught
//! exceptions and the browser's own errors (a refused CORS request, a
//! failed load) are collected for the test to assert on.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::{HarnessError, start_err};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The flags every headless run here starts Chromium with: no sandbox (CI
/// runs as root), no GPU, nothing fetched in the background.
pub const HEADLESS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
];

/// The Chromium binary on PATH.
pub fn chromium() -> Result<&'static str, HarnessError> {
    for c in ["chromium", "chromium-browser", "google-chrome"] {
        if Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Ok(c);
        }
    }
    Err(HarnessError::Missing {
        binary: "chromium".into(),
    })
}

/// One browser with one page; killed when dropped.
pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    socket: Socket,
    session: String,
    next_id: u64,
    errors: Vec<String>,
}

impl Browser {
    /// Starts Chromium with a fresh profile and a `width` x `height` page.
    pub async fn launch(width: u32, height: u32) -> Result<Self, HarnessError> {
        let bin = chromium()?;
        let profile = tempfile::tempdir().map_err(|e| start_err("chromium", e))?;
        let child = Command::new(bin)
            .args(HEADLESS)
            .arg("--remote-debugging-port=0")
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("--window-size={width},{height}"))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| start_err("chromium", e))?;
        // Chromium writes its port and the browser's WebSocket path here.
        let active = profile.path().join("DevToolsActivePort");
        let until = Instant::now() + Duration::from_secs(30);
        let url = loop {
            if let Ok(text) = std::fs::read_to_string(&active) {
                let mut lines = text.lines();
                if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                    break format!("ws://127.0.0.1:{port}{path}");
                }
            }
            if Instant::now() > until {
                return Err(start_err("chromium", "no DevTools port within 30 s"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (socket, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .map_err(|e| start_err("chromium DevTools", e))?;
        let mut b = Self {
            child,
            _profile: profile,
            socket,
            session: String::new(),
            next_id: 0,
            errors: Vec::new(),
        };
        let target = b
            .send("Target.createTarget", json!({"url": "about:blank"}))
            .await
            .map_err(|e| start_err("chromium page", e))?;
        let attached = b
            .send(
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await
            .map_err(|e| start_err("chromium page", e))?;
        b.session = attached["sessionId"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            b.send(domain, json!({}))
                .await
                .map_err(|e| start_err("chromium page", e))?;
        }
        b.send(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await
        .map_err(|e| start_err("chromium page", e))?;
        Ok(b)
    }

    /// Sends one command to the page (the browser before a page is
    /// attached) and waits for its answer; events read meanwhile are
    /// checked for errors.
    pub async fn send(&mut self, method: &str, params: Value) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        self.socket
            .send(Message::text(msg.to_string()))
            .await
            .map_err(|e| format!("{method}: {e}"))?;
        let until = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let next = tokio::time::timeout_at(until, self.socket.next())
                .await
                .map_err(|_| format!("{method}: no answer within 30 s"))?;
            let text = match next {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(format!("{method}: {e}")),
                None => return Err(format!("{method}: the browser went away")),
            };
            let v: Value = serde_json::from_str(&text).map_err(|e| format!("{method}: {e}"))?;
            if v["id"].as_u64() == Some(id) {
                if let Some(e) = v.get("error") {
                    return Err(format!("{method}: {e}"));
                }
                return Ok(v["result"].clone());
            }
            self.note_event(&v);
        }
    }

    fn note_event(&mut self, v: &Value) {
        let p = &v["params"];
        match v["method"].as_str() {
            Some("Runtime.exceptionThrown") => {
                let d = &p["exceptionDetails"];
                let text = d["exception"]["description"]
                    .as_str()
                    .or(d["text"].as_str())
                    .unwrap_or("an exception");
                self.errors.push(format!("uncaught: {text}"));
            }
            Some("Runtime.consoleAPICalled") if p["type"] == "error" => {
                let args: Vec<String> = p["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| {
                        a["value"]
                            .as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| a["description"].to_string())
                    })
                    .collect();
                self.errors
                    .push(format!("console.error: {}", args.join(" ")));
            }
            Some("Log.entryAdded") if p["entry"]["level"] == "error" => {
                self.errors.push(format!(
                    "browser: {} {}",
                    p["entry"]["text"].as_str().unwrap_or_default(),
                    p["entry"]["url"].as_str().unwrap_or_default()
                ));
            }
            _ => {}
        }
    }

    /// Errors seen so far (console, uncaught exceptions, the browser's
    /// log), taken: a test that provoked one on purpose reads it here.
    pub fn take_errors(&mut self) -> Vec<String> {
        std::mem::take(&mut self.errors)
    }

    /// Loads `url` and waits until the document is complete.
    pub async fn goto(&mut self, url: &str) -> Result<(), String> {
        let r = self.send("Page.navigate", json!({"url": url})).await?;
        if let Some(e) = r["errorText"].as_str() {
            return Err(format!("{url}: {e}"));
        }
        self.wait_for(
            "document.readyState === 'complete'",
            Duration::from_secs(30),
        )
        .await
    }

    /// The value of `expression` (a promise is awaited).
    pub async fn eval(&mut self, expression: &str) -> Result<Value, String> {
        let r = self
            .send(
                "Runtime.evaluate",
                json!({"expression": expression, "awaitPromise": true, "returnByValue": true}),
            )
            .await?;
        if let Some(d) = r.get("exceptionDetails") {
            return Err(format!("{expression}: {d}"));
        }
        Ok(r["result"]["value"].clone())
    }

    /// Waits until `condition` is true on the page.
    pub async fn wait_for(&mut self, condition: &str, timeout: Duration) -> Result<(), String> {
        let until = Instant::now() + timeout;
        loop {
            if self.eval(&format!("!!({condition})")).await? == json!(true) {
                return Ok(());
            }
            if Instant::now() > until {
                return Err(format!("not true within {timeout:?}: {condition}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks the middle of the first element `selector` matches with the
    /// mouse, as a person would: it must be on the page and visible.
    pub async fn click(&mut self, selector: &str) -> Result<(), String> {
        let sel = serde_json::to_string(selector).map_err(|e| e.to_string())?;
        let at = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({sel}); if (!e) return null;
                   e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect();
                   if (!r.width || !r.height) return null;
                   const x = r.left + r.width / 2, y = r.top + r.height / 2;
                   const hit = document.elementFromPoint(x, y);
                   return (hit === e || e.contains(hit)) ? [x, y] : 'covered'; }})()"
            ))
            .await?;
        let (x, y) = match at.as_array().map(|a| (a[0].as_f64(), a[1].as_f64())) {
            Some((Some(x), Some(y))) => (x, y),
            _ => return Err(format!("{selector}: not clickable ({at})")),
        };
        for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
            self.send(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            )
            .await?;
        }
        Ok(())
    }

    /// Drags the mouse across the element `selector` from `from` to `to`
    /// (fractions of its width, at half its height).
    pub async fn drag(&mut self, selector: &str, from: f64, to: f64) -> Result<(), String> {
        let sel = serde_json::to_string(selector).map_err(|e| e.to_string())?;
        let r = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({sel}); e.scrollIntoView({{block: 'center'}});
                   const r = e.getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; }})()"
            ))
            .await?;
        let n = |i: usize| r[i].as_f64().unwrap_or(0.0);
        let (x0, y, w) = (n(0), n(1) + n(3) / 2.0, n(2));
        let at = |f: f64| x0 + w * f;
        let steps = [
            ("mouseMoved", at(from), "none"),
            ("mousePressed", at(from), "left"),
            ("mouseMoved", at((from + to) / 2.0), "left"),
            ("mouseMoved", at(to), "left"),
            ("mouseReleased", at(to), "left"),
        ];
        for (kind, x, button) in steps {
            self.send(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": button, "clickCount": 1}),
            )
            .await?;
        }
        Ok(())
    }

    /// Clicks into the field `selector`, clears it and types `text`.
    pub async fn fill(&mut self, selector: &str, text: &str) -> Result<(), String> {
        self.click(selector).await?;
        let sel = serde_json::to_string(selector).map_err(|e| e.to_string())?;
        self.eval(&format!("document.querySelector({sel}).select()"))
            .await?;
        self.send("Input.insertText", json!({"text": text})).await?;
        Ok(())
    }

    /// Saves a PNG of the whole page (beyond the window's height).
    pub async fn screenshot(&mut self, path: &Path) -> Result<(), String> {
        let shot = self
            .send(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await?;
        let b64 = shot["data"].as_str().ok_or("no screenshot data")?;
        let png = data_encoding::BASE64
            .decode(b64.as_bytes())
            .map_err(|e| format!("screenshot: {e}"))?;
        std::fs::write(path, png).map_err(|e| format!("{}: {e}", path.display()))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
