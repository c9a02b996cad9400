//! `Converse`: one conversational turn as a stream of events, the
//! conversation kept in the shopper's session (`conversation:{session_id}`,
//! 30 minutes sliding). The domain (intent, refinement, references,
//! replies) is [`crate::converse`]; this module reads the session, runs the
//! search, and sends the events as they are ready.

use super::*;
use crate::converse::{self, Intent};

/// The stream of a turn's events.
pub type ConverseStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::ConverseEvent, Status>> + Send>>;

fn intent_to_proto(i: Intent) -> pb::ConverseIntent {
    match i {
        Intent::NewSearch => pb::ConverseIntent::NewSearch,
        Intent::Refine => pb::ConverseIntent::Refine,
        Intent::Compare => pb::ConverseIntent::Compare,
        Intent::AskFit => pb::ConverseIntent::AskFit,
    }
}

fn event(e: pb::converse_event::Event) -> Result<pb::ConverseEvent, Status> {
    Ok(pb::ConverseEvent { event: Some(e) })
}

/// The longest prefix of `s` of at most `max` bytes, on a character boundary.
fn clamp(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Service {
    /// One turn (see the proto's `Converse`).
    pub(super) async fn converse_turn(
        &self,
        req: Request<pb::ConverseRequest>,
    ) -> Result<ConverseStream, Status> {
        let who = Identity::of(&req);
        let req = req.into_inner();
        check_session_id(&req.session_id)?;
        let text = req.utterance.trim().to_string();
        if req.utterance.len() > converse::MAX_UTTERANCE {
            return Err(Status::invalid_argument(format!(
                "utterance: {} bytes is over the maximum of {}",
                req.utterance.len(),
                converse::MAX_UTTERANCE
            )));
        }
        if text.is_empty() {
            return Err(Status::invalid_argument(
                "utterance: empty; say what you are looking for (1-512 bytes)",
            ));
        }
        if let Some(face) = &req.face {
            rank::face_widths(face)?;
        }
        let session = self.read_session(&who, &req.session_id).await?;
        let conv = session
            .as_ref()
            .and_then(|s| s.conversation.clone())
            .unwrap_or_default();
        let catalog = self.snapshot.load();
        let lex = self.lexicons.get(&catalog);
        let voted = match &self.intents {
            Some(examples) => self
                .query_vector(&text)
                .await
                .ok()
                .and_then(|v| examples.nearest(v.as_slice())),
            None => None,
        };
        let refers = converse::references(&text, converse::SHOWN);
        if session.is_none()
            && (voted.is_some_and(|(i, c)| i != Intent::NewSearch && c >= 0.5)
                || (!refers.is_empty() && voted.is_none_or(|(i, _)| i != Intent::NewSearch)))
        {
            return Err(Status::failed_precondition(format!(
                "session_id: no conversation {:?} (it expired after 30 minutes without activity, or never started): start with what you are looking for",
                req.session_id
            )));
        }
        let shown: Vec<Arc<Frame>> = conv
            .shown_ids
            .iter()
            .filter_map(|id| catalog.by_id.get(id.as_str()))
            .map(|&i| catalog.frames[i as usize].clone())
            .collect();
        let (intent, confidence) = converse::intent(&text, &conv.query, shown.len(), voted);
        let query = match intent {
            Intent::NewSearch => clamp(&text, converse::MAX_QUERY).to_string(),
            Intent::Refine => {
                let mut prices: Vec<f64> = shown.iter().map(|f| f.price).collect();
                prices.sort_by(f64::total_cmp);
                let median = prices.get(prices.len() / 2).copied();
                let currency = shown.first().map_or("", |f| f.currency.as_str());
                converse::refine(&lex, &conv.query, &text, median, currency)
            }
            Intent::Compare | Intent::AskFit => conv.query.clone(),
        };
        let refs: Vec<Arc<Frame>> = converse::references(&text, shown.len())
            .into_iter()
            .map(|i| shown[i].clone())
            .collect();
        let understood = understand::understand(&lex, &query);
        let interpretation = pb::ConverseInterpretation {
            intent: intent_to_proto(intent) as i32,
            confidence,
            query: query.clone(),
            understood: understood
                .chips
                .iter()
                .map(crate::convert::chip_to_proto)
                .collect(),
            product_ids: refs.iter().map(|f| f.id.clone()).collect(),
        };
        let face_width = req
            .face
            .as_ref()
            .or(session.as_ref().and_then(|s| s.face.as_ref()))
            .map(|f| f.face_width_mm)
            .filter(|w| *w > 0.0);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::ConverseEvent, Status>>(4);
        let svc = self.clone();
        let session_id = req.session_id.clone();
        tokio::spawn(async move {
            use pb::converse_event::Event;
            if tx
                .send(event(Event::Interpretation(interpretation)))
                .await
                .is_err()
            {
                return;
            }
            let (results, reply, shown_ids) = match intent {
                Intent::NewSearch | Intent::Refine => {
                    let search = pb::SearchProductsRequest {
                        query: query.clone(),
                        page: Some(pb::PageRequest {
                            page_size: converse::SHOWN as u32,
                            ..Default::default()
                        }),
                        ..Default::default()
                    };
                    match svc.search_products(Request::new(search)).await {
                        Ok(r) => {
                            let r = r.into_inner();
                            let ids: Vec<String> = r
                                .hits
                                .iter()
                                .filter_map(|h| h.product.as_ref().map(|p| p.id.clone()))
                                .collect();
                            let catalog = svc.snapshot.load();
                            let top = ids.first().and_then(|id| catalog.get(id));
                            let labels: Vec<String> =
                                r.understood.iter().map(|c| c.label.clone()).collect();
                            let total = r.page.as_ref().map_or(0, |p| p.total_size) as usize;
                            let reply = converse::reply_results(total, top, &labels);
                            (r, reply, ids)
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    }
                }
                Intent::Compare | Intent::AskFit => {
                    let hits = refs
                        .iter()
                        .map(|f| pb::SearchHit {
                            product: Some(f.to_proto()),
                            ..Default::default()
                        })
                        .collect();
                    let reply = match (intent, refs.as_slice()) {
                        (Intent::Compare, [a, b, ..]) => converse::reply_compare(a, b),
                        (Intent::Compare, _) => {
                            "Which two? Say for example \"compare the first and the third\".".into()
                        }
                        (_, [f, ..]) => converse::reply_fit(f, face_width),
                        _ => "Which one? Say for example \"does the second one fit me\".".into(),
                    };
                    let r = pb::SearchProductsResponse {
                        hits,
                        ..Default::default()
                    };
                    (r, reply, conv.shown_ids.clone())
                }
            };
            if tx.send(event(Event::Results(results))).await.is_err() {
                return;
            }
            let mut s = session.unwrap_or_else(|| pb::SessionContext {
                session_id: session_id.clone(),
                ..Default::default()
            });
            s.conversation = Some(pb::Conversation {
                query,
                shown_ids,
                turns: conv.turns.saturating_add(1),
            });
            s.expires_at_unix_ms =
                discovery_kit::now_unix_ms() + kinds::SESSION.ttl.as_millis() as i64;
            svc.cache
                .set(
                    &kinds::SESSION,
                    &who.session_key(&session_id),
                    Bytes::from(s.encode_to_vec()),
                    &[],
                )
                .await;
            let _ = tx.send(event(Event::Reply(reply))).await;
        });
        let stream =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) });
        Ok(Box::pin(stream))
    }
}
