//! The `Analysis` gRPC service over a [`ScoringPool`]: items are decoded and queued together, so a
//! request is scored in parallel and refused as a whole when the queue cannot take it.

use std::sync::{Arc, OnceLock};

use auscult_model::MachineKey;
use auscult_proto::analysis::v1 as pb;
use auscult_proto::ingest::v1::SampleEncoding as ProtoEncoding;
use auscult_telemetry::TraceParent;
use tonic::{Request, Response, Status};
use tracing::{info_span, instrument};

use crate::{FrameAudio, ScoreError, ScoreInput, Scored, ScoringPool, model_audio};

/// A span for scoring one item, from its arrival to its verdict, when the item carries the `traceparent`
/// of a trace being exported: the last hop of a frame's trace.
fn item_span(item: &pb::ScoreItem) -> Option<tracing::Span> {
    if item.traceparent.is_empty() || !auscult_telemetry::trace::exporting() {
        return None;
    }
    let parent = TraceParent::parse(&item.traceparent)?;
    let frame_id = match &item.source {
        Some(pb::score_item::Source::FrameId(id)) => Some(*id),
        _ => None,
    };
    let span = info_span!(
        parent: None,
        "score",
        frame_id,
        outcome = tracing::field::Empty,
        anomalous = tracing::field::Empty,
        anomaly_score = tracing::field::Empty,
    );
    parent.adopt(&span);
    Some(span)
}

/// The most items one request may carry.
pub const MAX_ITEMS: usize = 256;

/// The most history summaries one item may carry: a minute of one-second frames, far more than a clip.
pub const MAX_HISTORY: usize = 64;

/// Serves `Analysis.Score`; answers UNAVAILABLE until its first model is loaded.
#[derive(Debug, Clone)]
pub struct AnalysisService {
    pub pool: Arc<OnceLock<ScoringPool>>,
    /// Where stored frames are read from; without it, only inline audio is accepted.
    pub store: Option<auscult_store::Pool>,
}

impl AnalysisService {
    /// A service that scores with `pool` at once.
    pub fn ready(pool: ScoringPool, store: Option<auscult_store::Pool>) -> Self {
        Self {
            pool: Arc::new(OnceLock::from(pool)),
            store,
        }
    }

    fn scoring(&self) -> Result<&ScoringPool, Status> {
        self.pool
            .get()
            .ok_or_else(|| Status::unavailable("no model loaded yet: publish and activate one"))
    }
}

type Outcome = Result<Scored, (pb::FailureReason, String)>;

#[tonic::async_trait]
impl pb::analysis_server::Analysis for AnalysisService {
    #[instrument(skip_all, fields(items = request.get_ref().items.len()))]
    async fn score(
        &self,
        request: Request<pb::ScoreRequest>,
    ) -> Result<Response<pb::ScoreResponse>, Status> {
        let items = request.into_inner().items;
        if let Some(item) = items.iter().find(|i| i.history.len() > MAX_HISTORY) {
            return Err(Status::invalid_argument(format!(
                "an item carries {} history summaries; the limit is {MAX_HISTORY}",
                item.history.len()
            )));
        }
        if items.len() > MAX_ITEMS {
            return Err(Status::invalid_argument(format!(
                "{} items in one request; the limit is {MAX_ITEMS}",
                items.len()
            )));
        }
        let started = std::time::Instant::now();
        let pool = self.scoring()?;
        metrics::gauge!("auscult_analysis_queue_waiting").set(pool.waiting() as f64);
        let stored = self.stored_audio(&items).await?;
        let model = pool.model();
        let rate = model.info.spectrogram.sample_rate;
        // Loading checked the model's channel; a file that somehow holds another value is heard as
        // the default, its first channel.
        let channel = model.info.channel.parse().unwrap_or_default();
        let mut pending = Vec::with_capacity(items.len());
        let spans: Vec<Option<tracing::Span>> = items.iter().map(item_span).collect();
        for item in &items {
            let machine = machine(item);
            let audio = match &item.source {
                Some(pb::score_item::Source::FrameId(id)) => match stored.get(id) {
                    Some(audio) => Ok(FrameAudio {
                        sample_rate_hz: audio.sample_rate_hz,
                        channels: audio.channels,
                        encoding: audio.encoding,
                        samples: &audio.samples,
                    }),
                    None => Err((pb::FailureReason::NotFound, format!("no stored frame {id}"))),
                },
                Some(pb::score_item::Source::Audio(inline)) => inline_audio(inline),
                None => Err((
                    pb::FailureReason::InvalidAudio,
                    "item has neither a frame id nor audio".into(),
                )),
            };
            let queued = audio
                .and_then(|audio| {
                    model_audio(&audio, channel, rate)
                        .map_err(|e| (pb::FailureReason::InvalidAudio, e))
                })
                .map(|samples| {
                    pool.submit(ScoreInput {
                        samples,
                        machine,
                        history: item.history.iter().filter_map(window_summary).collect(),
                    })
                });
            pending.push(match queued {
                Ok(Ok(answer)) => Ok(answer),
                Ok(Err(ScoreError::Busy(depth))) => {
                    metrics::counter!("auscult_analysis_requests_refused_total", "reason" => "busy").increment(1);
                    return Err(Status::resource_exhausted(format!(
                        "the scoring queue is full ({depth} jobs waiting): retry with backoff"
                    )));
                }
                Ok(Err(e)) => return Err(Status::unavailable(e.to_string())),
                Err(failure) => Err(failure),
            });
        }
        let mut results = Vec::with_capacity(pending.len());
        for (entry, span) in pending.into_iter().zip(spans) {
            let outcome: Outcome = match entry {
                Ok(answer) => match answer.await {
                    Ok(Ok(scored)) => Ok(scored),
                    Ok(Err(ScoreError::Unscorable(why))) => {
                        Err((pb::FailureReason::Unscorable, why))
                    }
                    Ok(Err(ScoreError::TooShort(why))) => Err((pb::FailureReason::TooShort, why)),
                    Ok(Err(e)) => return Err(Status::unavailable(e.to_string())),
                    Err(_) => return Err(Status::unavailable("the scoring pool stopped")),
                },
                Err(failure) => Err(failure),
            };
            let label = match &outcome {
                Ok(_) => "verdict",
                Err((pb::FailureReason::NotFound, _)) => "not_found",
                Err((pb::FailureReason::InvalidAudio, _)) => "invalid_audio",
                Err((pb::FailureReason::TooShort, _)) => "too_short",
                Err(_) => "unscorable",
            };
            metrics::counter!("auscult_analysis_items_total", "outcome" => label).increment(1);
            if let Some(span) = span {
                span.record("outcome", label);
                if let Ok(scored) = &outcome {
                    let assessment = &scored.assessment;
                    span.record(
                        "anomalous",
                        assessment.verdict == auscult_model::Verdict::Anomalous,
                    );
                    span.record("anomaly_score", assessment.anomaly_score);
                }
            }
            results.push(result(pool, outcome));
        }
        metrics::histogram!("auscult_analysis_request_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(Response::new(pb::ScoreResponse { results }))
    }
}

impl AnalysisService {
    async fn stored_audio(
        &self,
        items: &[pb::ScoreItem],
    ) -> Result<std::collections::HashMap<i64, auscult_store::StoredAudio>, Status> {
        let ids: Vec<i64> = items
            .iter()
            .filter_map(|item| match item.source {
                Some(pb::score_item::Source::FrameId(id)) => Some(id),
                _ => None,
            })
            .collect();
        if ids.is_empty() {
            return Ok(Default::default());
        }
        let Some(store) = &self.store else {
            return Err(Status::failed_precondition(
                "this analysis service has no database: send audio inline",
            ));
        };
        let client = store
            .get()
            .await
            .map_err(|e| Status::unavailable(format!("database: {e}")))?;
        auscult_store::frame_audio(&**client, &ids)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))
    }
}

fn result(pool: &ScoringPool, outcome: Outcome) -> pb::ScoreResult {
    {
        let outcome = match outcome {
            Ok(scored) => pb::score_result::Outcome::Verdict(verdict(pool, scored)),
            Err((reason, detail)) => pb::score_result::Outcome::Failure(pb::Failure {
                reason: reason.into(),
                detail,
            }),
        };
        pb::ScoreResult {
            outcome: Some(outcome),
        }
    }
}

fn verdict(pool: &ScoringPool, scored: Scored) -> pb::Verdict {
    {
        let model = pool.model();
        let a = scored.assessment;
        let classes: Vec<String> = if model.info.version == scored.model_version {
            model.info.classes.iter().map(ToString::to_string).collect()
        } else {
            Vec::new()
        };
        pb::Verdict {
            anomalous: a.verdict == auscult_model::Verdict::Anomalous,
            anomaly_score: a.anomaly_score,
            threshold: a.threshold,
            class: a.class,
            class_probability: a.class_probability,
            probabilities: classes
                .into_iter()
                .zip(scored.probabilities)
                .map(|(class, probability)| pb::ClassProbability { class, probability })
                .collect(),
            model_version: scored.model_version,
            profile: a.profile.to_string(),
            profile_scope: match a.scope {
                auscult_model::profile::Scope::Machine => "machine",
                auscult_model::profile::Scope::MachineType => "machine_type",
                auscult_model::profile::Scope::Global => "global",
            }
            .into(),
            top_bands: a
                .top_bands
                .iter()
                .map(|b| pb::BandDeparture {
                    low_hz: b.low_hz,
                    high_hz: b.high_hz,
                    measure: match b.measure {
                        auscult_model::assessment::Measure::Mean => "mean",
                        auscult_model::assessment::Measure::Peak => "peak",
                    }
                    .into(),
                    departure_db: b.departure_db,
                    z: b.z,
                })
                .collect(),
            windows: u32::try_from(a.window_scores.len()).unwrap_or(u32::MAX),
            history_windows: u32::try_from(a.history_windows).unwrap_or(u32::MAX),
            clip: a.as_clip,
            parts: a.parts.map(|p| pb::ScoreParts {
                windows: p.windows,
                band_spectrum: p.band_spectrum,
                band_peaks: p.band_peaks,
                impulsiveness: p.impulsiveness,
                impulsiveness_side: p.impulsiveness_side.map_or("", |s| s.as_str()).into(),
                furthest: p.furthest().unwrap_or_default().into(),
            }),
            summary: Some(pb::WindowSummary {
                model_version: scored.summary.model_version,
                windows: u32::try_from(scored.summary.windows).unwrap_or(u32::MAX),
                mean_score: scored.summary.mean_score,
                band_means: scored.summary.band_means,
                band_peaks: scored.summary.band_peaks,
                waveform_peaks: scored.summary.waveform.peaks.clone(),
                waveform_energy: scored.summary.waveform.energy,
                waveform_samples: scored.summary.waveform.samples as u64,
            }),
        }
    }
}

/// A history summary as the model takes it; malformed ones (wrong band counts, more peak rows than
/// windows) are left out, the model ignores them anyway.
fn window_summary(summary: &pb::WindowSummary) -> Option<auscult_model::WindowSummary> {
    let summary = auscult_model::WindowSummary {
        model_version: summary.model_version.clone(),
        windows: usize::try_from(summary.windows).unwrap_or(0).min(1024),
        mean_score: summary.mean_score,
        band_means: summary.band_means.clone(),
        band_peaks: summary.band_peaks.clone(),
        waveform: waveform(summary),
    };
    summary.has_whole_bands().then_some(summary)
}

/// A summary's waveform statistics; impossible ones (negative, not finite, an energy beyond what
/// full-scale samples could hold) count as not measured.
fn waveform(summary: &pb::WindowSummary) -> auscult_model::features::Waveform {
    let samples = usize::try_from(summary.waveform_samples).unwrap_or(0);
    let peaks = &summary.waveform_peaks;
    let loudest = peaks.iter().copied().fold(0.0_f32, f32::max);
    let plausible = samples <= 1 << 24
        && peaks.iter().all(|p| p.is_finite() && *p >= 0.0)
        && peaks.len()
            == samples.div_ceil(auscult_model::features::PEAK_BLOCK)
                * auscult_model::features::IMPULSE_SCALES.len()
        && summary.waveform_energy.is_finite()
        && summary.waveform_energy >= 0.0
        && summary.waveform_energy <= samples as f64 * f64::from(loudest).powi(2) * 1.0001;
    if plausible {
        auscult_model::features::Waveform {
            peaks: peaks.clone(),
            energy: summary.waveform_energy,
            samples,
        }
    } else {
        auscult_model::features::Waveform::default()
    }
}

fn machine(item: &pb::ScoreItem) -> Option<MachineKey> {
    (!item.machine_type.is_empty()).then(|| MachineKey {
        machine_type: item.machine_type.clone(),
        machine_id: if item.machine_id.is_empty() {
            auscult_model::profile::ANY.into()
        } else {
            item.machine_id.clone()
        },
    })
}

fn inline_audio(inline: &pb::InlineAudio) -> Result<FrameAudio<'_>, (pb::FailureReason, String)> {
    let invalid = |detail: String| (pb::FailureReason::InvalidAudio, detail);
    let encoding = match ProtoEncoding::try_from(inline.encoding) {
        Ok(ProtoEncoding::PcmS16le) => auscult_frame::SampleEncoding::PcmS16le,
        Ok(ProtoEncoding::F32le) => auscult_frame::SampleEncoding::F32le,
        _ => {
            return Err(invalid(format!(
                "unknown sample encoding {}",
                inline.encoding
            )));
        }
    };
    if !(1000..=192_000).contains(&inline.sample_rate_hz) {
        return Err(invalid(format!("sample rate {} Hz", inline.sample_rate_hz)));
    }
    let channels = u16::try_from(inline.channels)
        .ok()
        .filter(|c| (1..=16).contains(c))
        .ok_or_else(|| invalid(format!("{} channels", inline.channels)))?;
    let frame_bytes = encoding.bytes_per_sample() * usize::from(channels);
    if inline.samples.is_empty() || !inline.samples.len().is_multiple_of(frame_bytes) {
        return Err(invalid(format!(
            "{} bytes is not a whole number of {channels}-channel samples",
            inline.samples.len()
        )));
    }
    Ok(FrameAudio {
        sample_rate_hz: inline.sample_rate_hz,
        channels,
        encoding,
        samples: &inline.samples,
    })
}

#[cfg(test)]
mod tests {
    use auscult_model::profile::{PartScores, Side};
    use auscult_proto::analysis::score_parts;

    #[test]
    fn the_parts_analysis_names_are_the_words_the_contract_allows() {
        assert_eq!(PartScores::NAMES, score_parts::PART_NAMES);
        assert_eq!(Side::ALL.map(Side::as_str), score_parts::SIDES);
    }
}
