//! `Journey.AnalyzeAndRecommend`: the shopper's journey in one call for a
//! BFF (public as `Discovery.AnalyzeAndRecommend`). The photo goes to
//! face-analysis (`AnalyzeFace`, in the caller's trace), the face found is
//! kept under its analysis id, and the first page is served exactly as
//! `Recommend` with that `analysis_id` serves it (same cache entry, an
//! impression like any other). With no photo, `recommend.face.analysis_id`
//! names a stored analysis instead.

use discovery_proto::v1 as pb;
use discovery_proto::v1::journey_server::Journey;
use tonic::{Request, Response, Status};

use super::{Identity, Service};

#[tonic::async_trait]
impl Journey for Service {
    #[tracing::instrument(skip_all)]
    async fn analyze_and_recommend(
        &self,
        req: Request<pb::AnalyzeAndRecommendRequest>,
    ) -> Result<Response<pb::AnalyzeAndRecommendResponse>, Status> {
        let who = Identity::of(&req);
        let pb::AnalyzeAndRecommendRequest { analyze, recommend } = req.into_inner();
        let mut recommend = recommend.unwrap_or_default();
        let analysis = match analyze {
            Some(mut a) => {
                if a.input.is_none() {
                    return Err(Status::invalid_argument(
                        "analyze: give an image or landmarks (or leave analyze unset and \
                         name a stored analysis in recommend.face.analysis_id)",
                    ));
                }
                // The shopper of the page is the shopper of the photo.
                let mut requester = recommend.requester.clone();
                who.apply(&mut requester);
                a.requester = requester;
                let resp = self.faces.analyze(a).await?;
                let id = resp
                    .result
                    .as_ref()
                    .map(|r| r.analysis_id.clone())
                    .unwrap_or_default();
                recommend.face.get_or_insert_default().analysis_id = id;
                resp
            }
            None => {
                let id = recommend
                    .face
                    .as_ref()
                    .map(|f| f.analysis_id.as_str())
                    .unwrap_or_default();
                if id.is_empty() {
                    return Err(Status::invalid_argument(
                        "analyze: give a photo or landmarks, or recommend.face.analysis_id",
                    ));
                }
                let mut result = self.faces.fetch(id).await?;
                result.landmarks.clear();
                pb::AnalyzeFaceResponse {
                    result: Some(result),
                    cached: true,
                }
            }
        };
        let page = self
            .serve_page(who, recommend, true)
            .await?
            .into_message()?;
        Ok(Response::new(pb::AnalyzeAndRecommendResponse {
            analysis: Some(analysis),
            recommendations: Some(page),
        }))
    }
}
