//! The chart's topology as processes: every service a real `discovery serve`
//! process per replica, configured **from the chart's own rendering**
//! (`helm template` with the given values: the ConfigMap, each Deployment's
//! env, args and probes), on one machine.
//!
//! What a pod has that a process here does not, and what stands in for it
//! (nothing else is changed from the rendering):
//! - its own IP: each process binds its own loopback address
//!   (`127.77.<cluster>.<n>`, `DISCOVERY_BIND_IP`), so every replica keeps
//!   the chart's ports;
//! - cluster DNS: the chart's headless Service names resolve to the
//!   replicas' addresses through `DISCOVERY_HOSTS` (what /etc/hosts is to a
//!   process);
//! - Secrets: the MongoDB URI, Redis URLs and internal secret are the test
//!   servers' and the test's;
//! - volumes: a Secret's mounted path (the gateway's TLS key pair) is a
//!   directory given by the test; a ConfigMap's (monitoring's alert rules)
//!   is its keys written as files, as the kubelet mounts them;
//! - the image's own environment (`DISCOVERY_FACE_MODELS_DIR`).
//!
//! [`Probe`]s run as the kubelet runs them: a gRPC health check of service
//! "" on the pod's port (no TLS: the kubelet's gRPC probe has none), or an
//! HTTP GET of a path on a named port, 200-399 passing.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{HarnessError, start_err, workspace_root};

/// The chart rendered with some values.
#[derive(Debug, Clone)]
pub struct Chart {
    docs: Vec<Value>,
    /// Namespace rendered into.
    pub namespace: String,
}

/// How the kubelet checks a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// `grpc: {port}`: grpc.health.v1 Check of service "".
    Grpc(u16),
    /// `httpGet: {path, port}` (port resolved to a number).
    Http {
        /// Path.
        path: String,
        /// Port.
        port: u16,
    },
}

/// One Deployment as the chart renders it.
#[derive(Debug, Clone)]
pub struct Deployment {
    /// `app.kubernetes.io/name` (gateway, recommendation...).
    pub service: String,
    /// `metadata.name` (pods are named after it).
    pub name: String,
    /// Container args.
    pub args: Vec<String>,
    /// Env entries with a literal value (`$(VAR)` references still in).
    pub env: BTreeMap<String, String>,
    /// Env entries from the pod's own fields (`valueFrom.fieldRef`): name
    /// and field path.
    pub field_env: Vec<(String, String)>,
    /// Env entries from a Secret (the harness supplies them).
    pub secret_env: Vec<String>,
    /// Named container ports.
    pub ports: BTreeMap<String, u16>,
    /// Startup, readiness and liveness probes.
    pub startup: Probe,
    /// Readiness.
    pub readiness: Probe,
    /// Liveness.
    pub liveness: Probe,
    /// Volume mount paths by volume name.
    pub mounts: BTreeMap<String, String>,
    /// Volumes from a ConfigMap: volume name → ConfigMap name.
    pub config_volumes: BTreeMap<String, String>,
    /// `spec.minReadySeconds`: how long a new pod is ready before a rolling
    /// update stops an old one.
    pub min_ready: Duration,
}

fn tools() -> PathBuf {
    workspace_root().join(".tools")
}

/// Every YAML document in `yaml` (none empty), as JSON values, through the
/// YAML parser `scripts/check-deploy.sh` installs (PyYAML).
fn yaml_documents(yaml: &[u8]) -> Result<Vec<Value>, HarnessError> {
    let python = tools().join("venv/bin/python");
    let mut py = Command::new(&python)
        .args([
            "-c",
            "import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| start_err(&format!("{} (yaml to json)", python.display()), e))?;
    {
        use std::io::Write;
        let mut stdin = py.stdin.take().expect("piped");
        stdin
            .write_all(yaml)
            .map_err(|e| start_err("yaml to json", e))?;
    }
    let json = py
        .wait_with_output()
        .map_err(|e| start_err("yaml to json", e))?;
    serde_json::from_slice(&json.stdout).map_err(|e| start_err("yaml to json", e))
}

/// The environment of each service of `docker-compose.yml`, as
/// `docker-compose config` resolves it (anchors and merges applied), for
/// the services that run `discovery` (those setting `DISCOVERY_SERVICE`).
pub fn compose_services() -> Result<BTreeMap<String, BTreeMap<String, String>>, HarnessError> {
    let out = Command::new("docker-compose")
        .arg("-f")
        .arg(workspace_root().join("docker-compose.yml"))
        .arg("config")
        .output()
        .map_err(|e| {
            start_err(
                "docker-compose config (scripts/check-deploy.sh installs it)",
                e,
            )
        })?;
    if !out.status.success() {
        return Err(start_err(
            "docker-compose config",
            String::from_utf8_lossy(&out.stderr),
        ));
    }
    let docs = yaml_documents(&out.stdout)?;
    let mut services = BTreeMap::new();
    for (name, svc) in docs
        .first()
        .and_then(|d| d["services"].as_object())
        .into_iter()
        .flatten()
    {
        let env: BTreeMap<String, String> = match &svc["environment"] {
            Value::Object(m) => m
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        Value::Null => String::new(),
                        other => other.to_string(),
                    };
                    (k.clone(), v)
                })
                .collect(),
            Value::Array(a) => a
                .iter()
                .filter_map(|e| e.as_str()?.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            _ => BTreeMap::new(),
        };
        if env.contains_key("DISCOVERY_SERVICE") {
            services.insert(name.clone(), env);
        }
    }
    Ok(services)
}

impl Chart {
    /// `helm template discovery helm/discovery --namespace <ns>` with
    /// `--set` values. Helm and PyYAML come from `scripts/check-deploy.sh`
    /// (run by `make test` before the tests).
    pub fn render(namespace: &str, sets: &[&str]) -> Result<Self, HarnessError> {
        let helm = tools().join("helm");
        let python = tools().join("venv/bin/python");
        if !helm.is_file() || !python.is_file() {
            return Err(HarnessError::Missing {
                binary: format!(
                    "{} and {} (scripts/check-deploy.sh installs them)",
                    helm.display(),
                    python.display()
                ),
            });
        }
        let mut cmd = Command::new(&helm);
        cmd.args(["template", "discovery"])
            .arg(workspace_root().join("helm/discovery"))
            .args(["--namespace", namespace]);
        for s in sets {
            cmd.args(["--set", s]);
        }
        let out = cmd.output().map_err(|e| start_err("helm template", e))?;
        if !out.status.success() {
            return Err(start_err(
                "helm template",
                String::from_utf8_lossy(&out.stderr),
            ));
        }
        let docs = yaml_documents(&out.stdout)?;
        Ok(Self {
            docs,
            namespace: namespace.to_string(),
        })
    }

    /// The keys a Secret of the chart's own provides.
    pub fn secret_keys(&self) -> Vec<String> {
        self.of_kind("Secret")
            .flat_map(|d| {
                ["data", "stringData"]
                    .into_iter()
                    .flat_map(move |f| d[f].as_object().into_iter().flat_map(|m| m.keys().cloned()))
            })
            .collect()
    }

    /// Each HorizontalPodAutoscaler's spec, by the service it scales.
    pub fn hpas(&self) -> BTreeMap<String, Value> {
        self.of_kind("HorizontalPodAutoscaler")
            .map(|d| {
                let name = d["metadata"]["name"].as_str().unwrap_or_default();
                let service = self
                    .deployments()
                    .into_iter()
                    .find(|dep| dep.name == name)
                    .map_or_else(|| name.to_string(), |dep| dep.service);
                (service, d["spec"].clone())
            })
            .collect()
    }

    fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.docs.iter().filter(move |d| d["kind"] == kind)
    }

    /// The ConfigMap's data (the one every pod's `envFrom` names).
    pub fn config_map(&self) -> BTreeMap<String, String> {
        let named = self
            .of_kind("Deployment")
            .next()
            .and_then(|d| {
                d["spec"]["template"]["spec"]["containers"][0]["envFrom"]
                    .as_array()?
                    .iter()
                    .find_map(|e| e["configMapRef"]["name"].as_str())
            })
            .unwrap_or_default()
            .to_string();
        self.named_config_map(&named)
    }

    /// A ConfigMap's data by name.
    pub fn named_config_map(&self, name: &str) -> BTreeMap<String, String> {
        self.of_kind("ConfigMap")
            .find(|c| c["metadata"]["name"] == name)
            .and_then(|c| c["data"].as_object())
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every Deployment.
    pub fn deployments(&self) -> Vec<Deployment> {
        self.of_kind("Deployment").map(deployment).collect()
    }

    /// The headless Service's DNS name of `service` (as the ConfigMap uses it).
    pub fn headless(&self, service: &str) -> Option<String> {
        self.of_kind("Service")
            .find(|s| {
                s["spec"]["clusterIP"] == "None"
                    && s["metadata"]["labels"]["app.kubernetes.io/name"] == service
            })
            .and_then(|s| s["metadata"]["name"].as_str())
            .map(|n| format!("{n}.{}.svc", self.namespace))
    }
}

fn deployment(d: &Value) -> Deployment {
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    let ports: BTreeMap<String, u16> = c["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p["name"].as_str()?.to_string(),
                p["containerPort"].as_u64()? as u16,
            ))
        })
        .collect();
    let probe = |p: &Value| -> Probe {
        if let Some(port) = p["grpc"]["port"].as_u64() {
            return Probe::Grpc(port as u16);
        }
        let g = &p["httpGet"];
        let port = match &g["port"] {
            Value::String(name) => ports.get(name).copied().unwrap_or(0),
            v => v.as_u64().unwrap_or(0) as u16,
        };
        Probe::Http {
            path: g["path"].as_str().unwrap_or("/").to_string(),
            port,
        }
    };
    let mut env = BTreeMap::new();
    let mut secret_env = Vec::new();
    let mut field_env = Vec::new();
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap_or_default().to_string();
        match (
            e["value"].as_str(),
            e["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        ) {
            (Some(v), _) => {
                env.insert(name, v.to_string());
            }
            (None, Some(field)) => field_env.push((name, field.to_string())),
            (None, None) => secret_env.push(name),
        }
    }
    Deployment {
        service: d["metadata"]["labels"]["app.kubernetes.io/name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        name: d["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        min_ready: Duration::from_secs(d["spec"]["minReadySeconds"].as_u64().unwrap_or(0)),
        args: c["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(String::from))
            .collect(),
        env,
        field_env,
        secret_env,
        startup: probe(&c["startupProbe"]),
        readiness: probe(&c["readinessProbe"]),
        liveness: probe(&c["livenessProbe"]),
        mounts: c["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| {
                Some((
                    m["name"].as_str()?.to_string(),
                    m["mountPath"].as_str()?.to_string(),
                ))
            })
            .collect(),
        config_volumes: d["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| {
                Some((
                    v["name"].as_str()?.to_string(),
                    v["configMap"]["name"].as_str()?.to_string(),
                ))
            })
            .collect(),
        ports,
    }
}

/// What the harness supplies in place of Secrets, volumes and the image.
#[derive(Debug, Clone, Default)]
pub struct Supplied {
    /// `DISCOVERY_MONGO_URI`.
    pub mongo_uri: String,
    /// `DISCOVERY_MONGO_DATABASE` (a fresh one per test).
    pub mongo_database: String,
    /// `DISCOVERY_REDIS_URLS`.
    pub redis_urls: String,
    /// `DISCOVERY_INTERNAL_SECRET`.
    pub internal_secret: String,
    /// A mount path of the chart → a directory here.
    pub volumes: BTreeMap<String, PathBuf>,
    /// Anything else, as the image or the operator would set it (e.g.
    /// `DISCOVERY_FACE_MODELS_DIR`, `OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub extra: BTreeMap<String, String>,
}

/// A running replica.
pub struct Pod {
    /// Service name.
    pub service: String,
    /// Its address.
    pub ip: IpAddr,
    /// The rendered Deployment it runs.
    pub deployment: Deployment,
    /// Its log file.
    pub log: PathBuf,
    env: BTreeMap<String, String>,
    child: Option<Child>,
}

impl Pod {
    /// The address of a named port (`grpc`, `metrics`).
    pub fn addr(&self, port: &str) -> SocketAddr {
        SocketAddr::new(self.ip, self.deployment.ports[port])
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGTERM (what the kubelet sends first), then waits up to `grace`
    /// before SIGKILL (terminationGracePeriodSeconds).
    pub fn terminate(&mut self, grace: Duration) {
        // The wait blocks: on a multi-threaded runtime, hand this worker's
        // other tasks (the load, the Service IP's copies) to the others.
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| self.stop(grace))
            }
            _ => self.stop(grace),
        }
    }

    fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let until = Instant::now() + grace;
        while Instant::now() < until {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGKILL, no grace (a crash or an OOM kill).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The chart's topology, running.
pub struct Cluster {
    /// The rendering it runs.
    pub chart: Chart,
    /// Every replica.
    pub pods: Vec<Pod>,
    binary: PathBuf,
    hosts: String,
    /// Logs and volumes live here.
    pub dir: tempfile::TempDir,
}

static CLUSTERS: AtomicU8 = AtomicU8::new(0);

impl Cluster {
    /// Starts `replicas` of each service (those not named: none) from
    /// `chart`, with `binary` as the image's entry point. Returns once every
    /// process is spawned; see [`Cluster::wait_started`].
    pub fn start(
        chart: Chart,
        binary: &Path,
        replicas: &[(&str, usize)],
        supplied: &Supplied,
    ) -> Result<Self, HarnessError> {
        let dir = tempfile::tempdir().map_err(|e| start_err("cluster dir", e))?;
        let net = CLUSTERS.fetch_add(1, Ordering::Relaxed);
        let deployments = chart.deployments();
        // Addresses first: every process needs the whole DNS table.
        let mut plan = Vec::new();
        let mut next = 1u8;
        for (service, n) in replicas {
            let d = deployments
                .iter()
                .find(|d| d.service == *service)
                .ok_or_else(|| start_err(service, "no such Deployment in the chart"))?;
            for _ in 0..*n {
                plan.push((d.clone(), IpAddr::V4(Ipv4Addr::new(127, 77, net, next))));
                next += 1;
            }
        }
        let mut hosts = Vec::new();
        for (service, _) in replicas {
            if let Some(name) = chart.headless(service) {
                let ips: Vec<String> = plan
                    .iter()
                    .filter(|(d, _)| d.service == *service)
                    .map(|(_, ip)| ip.to_string())
                    .collect();
                hosts.push(format!("{name}={}", ips.join(",")));
            }
        }
        let hosts = hosts.join(" ");
        let config = chart.config_map();
        let mut pods = Vec::new();
        let mut per_service: BTreeMap<String, usize> = BTreeMap::new();
        let mut plan_before = |service: &str| {
            let n = per_service.entry(service.to_string()).or_default();
            *n += 1;
            *n - 1
        };
        for (i, (d, ip)) in plan.into_iter().enumerate() {
            let mut env = config.clone();
            let replica = plan_before(&d.service);
            let pod_name = format!("{}-{replica}", d.name);
            for (name, field) in &d.field_env {
                let value = match field.as_str() {
                    "metadata.name" => pod_name.clone(),
                    "metadata.namespace" => chart.namespace.clone(),
                    "status.podIP" => ip.to_string(),
                    other => {
                        return Err(start_err(
                            &d.service,
                            format!("{name}: the harness has no pod field {other}"),
                        ));
                    }
                };
                env.insert(name.clone(), value);
            }
            // The container's own `env` entries expand `$(VAR)` as the
            // kubelet does (variables defined before them).
            for (name, value) in &d.env {
                env.insert(name.clone(), expand(value, &env));
            }
            for name in &d.secret_env {
                match name.as_str() {
                    "DISCOVERY_INTERNAL_SECRET" => {
                        env.insert(name.clone(), supplied.internal_secret.clone());
                    }
                    other => {
                        return Err(start_err(
                            &d.service,
                            format!("{other} comes from a Secret the harness does not supply"),
                        ));
                    }
                }
            }
            env.insert("DISCOVERY_MONGO_URI".into(), supplied.mongo_uri.clone());
            env.insert(
                "DISCOVERY_MONGO_DATABASE".into(),
                supplied.mongo_database.clone(),
            );
            env.insert("DISCOVERY_REDIS_URLS".into(), supplied.redis_urls.clone());
            env.insert("DISCOVERY_BIND_IP".into(), ip.to_string());
            env.insert("DISCOVERY_HOSTS".into(), hosts.clone());
            // A ConfigMap volume is its keys as files, as the kubelet
            // mounts it (the test may supply a directory instead).
            let mut volumes = supplied.volumes.clone();
            for (volume, cm) in &d.config_volumes {
                let Some(mount) = d.mounts.get(volume) else {
                    continue;
                };
                if volumes.contains_key(mount) {
                    continue;
                }
                let local = dir.path().join("configmaps").join(cm);
                std::fs::create_dir_all(&local).map_err(|e| start_err(cm, e))?;
                for (k, v) in chart.named_config_map(cm) {
                    std::fs::write(local.join(k), v).map_err(|e| start_err(cm, e))?;
                }
                volumes.insert(mount.clone(), local);
            }
            for v in env.values_mut() {
                for (mount, local) in &volumes {
                    if let Some(rest) = v.strip_prefix(mount.as_str()) {
                        *v = format!("{}{rest}", local.display());
                    }
                }
            }
            env.extend(supplied.extra.clone());
            let log = dir.path().join(format!("{}-{i}.log", d.service));
            let mut pod = Pod {
                service: d.service.clone(),
                ip,
                deployment: d,
                log,
                env,
                child: None,
            };
            spawn(&mut pod, binary)?;
            pods.push(pod);
        }
        Ok(Self {
            chart,
            pods,
            binary: binary.to_path_buf(),
            hosts,
            dir,
        })
    }

    /// The `DISCOVERY_HOSTS` every process got.
    pub fn hosts(&self) -> &str {
        &self.hosts
    }

    /// Starts pod `i` again (same address and environment), after a kill.
    pub fn restart(&mut self, i: usize) -> Result<(), HarnessError> {
        let binary = self.binary.clone();
        spawn(&mut self.pods[i], &binary)
    }

    /// One step of a rolling update with a surge of one (the chart's
    /// `maxSurge: 1, maxUnavailable: 0`): starts pod `new` (a stopped slot
    /// of the same Deployment), waits until it is ready and then for the
    /// Deployment's `minReadySeconds`, then stops pod `old` (SIGTERM,
    /// `grace`).
    pub async fn roll(&mut self, old: usize, new: usize, grace: Duration) -> Result<(), String> {
        self.restart(new).map_err(|e| e.to_string())?;
        self.wait_pod_started(new, Instant::now() + Duration::from_secs(120))
            .await?;
        let pod = &self.pods[new];
        let until = Instant::now() + Duration::from_secs(60);
        while pod.deployment.readiness.check(pod.ip).await.is_err() {
            if Instant::now() > until {
                return Err(format!("{} at {} never got ready", pod.service, pod.ip));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(pod.deployment.min_ready).await;
        self.pods[old].terminate(grace);
        Ok(())
    }

    /// Indexes of the pods of `service`.
    pub fn of(&self, service: &str) -> Vec<usize> {
        (0..self.pods.len())
            .filter(|i| self.pods[*i].service == service)
            .collect()
    }
}

/// A Service's cluster IP as kube-proxy gives it: each new connection goes
/// to one of the Service's ready pods in turn. Readiness is each pod's
/// readiness probe, run every 250 ms (the endpoints controller's view).
/// Connections already open stay with their pod until it closes them. A
/// pod that refuses a new connection (killed, or no longer accepting before
/// the probe saw it unready) is skipped for the next one: through
/// kube-proxy's NAT the caller's own connect would fail, before it sent
/// anything, and it would connect again (every gRPC client does), landing
/// on another pod; this proxy has already accepted, so it connects again
/// itself.
pub struct ServiceIp {
    addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ServiceIp {
    /// Balances over `pods`: each pod's address and readiness probe.
    pub async fn start(pods: Vec<(SocketAddr, Probe)>) -> Result<Self, HarnessError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| start_err("service IP", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| start_err("service IP", e))?;
        let all: Vec<SocketAddr> = pods.iter().map(|p| p.0).collect();
        let ready = std::sync::Arc::new(std::sync::Mutex::new(all.clone()));
        let prober = {
            let ready = ready.clone();
            tokio::spawn(async move {
                loop {
                    let checks = pods.iter().map(|(a, probe)| async move {
                        probe.check(a.ip()).await.is_ok().then_some(*a)
                    });
                    let now: Vec<SocketAddr> = futures::future::join_all(checks)
                        .await
                        .into_iter()
                        .flatten()
                        .collect();
                    *ready.lock().unwrap_or_else(|p| p.into_inner()) = now;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            })
        };
        let accept = tokio::spawn(async move {
            let mut turn = 0usize;
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let _ = inbound.set_nodelay(true);
                let mut order = ready.lock().unwrap_or_else(|p| p.into_inner()).clone();
                if order.is_empty() {
                    // Nothing ready: try every pod (a Service with no ready
                    // endpoint refuses, but a pod may be ready since the probe).
                    order = all.clone();
                }
                turn = turn.wrapping_add(1);
                let n = order.len();
                order.rotate_left(turn % n);
                tokio::spawn(async move {
                    for backend in order {
                        let Ok(Ok(mut out)) = tokio::time::timeout(
                            Duration::from_secs(1),
                            tokio::net::TcpStream::connect(backend),
                        )
                        .await
                        else {
                            continue;
                        };
                        let _ = out.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                        return;
                    }
                });
            }
        });
        Ok(Self {
            addr,
            tasks: vec![prober, accept],
        })
    }

    /// The address callers connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for ServiceIp {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// `$(VAR)` replaced by `env`'s value; an unknown one stays as written
/// (the kubelet's rule).
fn expand(value: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find("$(") {
        out.push_str(&rest[..at]);
        let tail = &rest[at + 2..];
        match tail.find(')').map(|end| (&tail[..end], end)) {
            Some((name, end)) if env.contains_key(name) => {
                out.push_str(&env[name]);
                rest = &tail[end + 1..];
            }
            _ => {
                out.push_str("$(");
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    out
}

fn spawn(pod: &mut Pod, binary: &Path) -> Result<(), HarnessError> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&pod.log)
        .map_err(|e| start_err("pod log", e))?;
    let err = log.try_clone().map_err(|e| start_err("pod log", e))?;
    let child = Command::new(binary)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(&pod.env)
        .args(&pod.deployment.args)
        .stdout(log)
        .stderr(err)
        .spawn()
        .map_err(|e| start_err(&format!("{} at {}", pod.service, pod.ip), e))?;
    pod.child = Some(child);
    Ok(())
}

impl Probe {
    /// Runs the probe against a pod at `ip` as the kubelet would; `Ok` when
    /// it passes, else why not.
    pub async fn check(&self, ip: IpAddr) -> Result<(), String> {
        match self {
            Probe::Grpc(port) => {
                let url = format!("http://{}", SocketAddr::new(ip, *port));
                let channel = tonic::transport::Endpoint::from_shared(url.clone())
                    .map_err(|e| e.to_string())?
                    .connect_timeout(Duration::from_secs(1))
                    .timeout(Duration::from_secs(1))
                    .connect()
                    .await
                    .map_err(|e| format!("{url}: {e}"))?;
                let status = tonic_health::pb::health_client::HealthClient::new(channel)
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .map_err(|s| format!("{url}: {:?} {}", s.code(), s.message()))?
                    .into_inner()
                    .status;
                if status == tonic_health::ServingStatus::Serving as i32 {
                    Ok(())
                } else {
                    Err(format!("{url}: health status {status}"))
                }
            }
            Probe::Http { path, port } => {
                let addr = SocketAddr::new(ip, *port);
                let p = path.clone();
                tokio::task::spawn_blocking(move || http_status(addr, &p))
                    .await
                    .map_err(|e| e.to_string())?
                    .and_then(|code| {
                        if (200..400).contains(&code) {
                            Ok(())
                        } else {
                            Err(format!("http://{addr}{path}: HTTP {code}"))
                        }
                    })
            }
        }
    }
}

/// The status code of `GET path` over HTTP/1.1 (what the kubelet's
/// httpGet probe looks at), with a 1 s timeout.
fn http_status(addr: SocketAddr, path: &str) -> Result<u16, String> {
    use std::io::{Read, Write};
    let err = |e: &dyn std::fmt::Display| format!("http://{addr}{path}: {e}");
    let mut s =
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map_err(|e| err(&e))?;
    s.set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(|e| err(&e))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.37\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| err(&e))?;
    let mut head = [0u8; 64];
    let n = s.read(&mut head).map_err(|e| err(&e))?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| err(&format!("no status line in {line:?}")))
}

impl Cluster {
    /// Waits until every pod's startup probe passes, probing every 200 ms up
    /// to `timeout` (the chart allows 60 × 2 s). Says which pod failed and
    /// the tail of its log otherwise.
    pub async fn wait_started(&mut self, timeout: Duration) -> Result<(), String> {
        let until = Instant::now() + timeout;
        for i in 0..self.pods.len() {
            self.wait_pod_started(i, until).await?;
        }
        Ok(())
    }

    /// Waits until pod `i`'s startup probe passes (or `until`).
    pub async fn wait_pod_started(&mut self, i: usize, until: Instant) -> Result<(), String> {
        loop {
            let pod = &mut self.pods[i];
            let r = pod.deployment.startup.check(pod.ip).await;
            if r.is_ok() {
                return Ok(());
            }
            if !pod.running() || Instant::now() > until {
                return Err(format!(
                    "{} at {}: startup probe {:?}: {}\n{}",
                    pod.service,
                    pod.ip,
                    pod.deployment.startup,
                    r.unwrap_err(),
                    tail(&pod.log, 20)
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_references_expand_as_the_kubelet_expands_them() {
        let env: BTreeMap<String, String> = [("POD_NAME", "gw-0"), ("NS", "shop")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(expand("id=$(POD_NAME),ns=$(NS)", &env), "id=gw-0,ns=shop");
        assert_eq!(expand("$(UNKNOWN)/$(NS)", &env), "$(UNKNOWN)/shop");
        assert_eq!(expand("a $( b", &env), "a $( b");
    }
}
