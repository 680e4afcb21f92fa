//! `auscult clip export`: the audio an alert points at, as a WAV file an engineer can open.

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::{Context, bail};
use auscult_frame::SampleEncoding;
use auscult_store::{AlertAudio, ClipFrame};

use crate::database::{self, DatabaseArgs};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Write the audio around an alert (raw frames while they are kept, then the kept audio) as a WAV file.
    Export {
        #[command(flatten)]
        database: DatabaseArgs,
        /// The alert's id (`id` in the alerts index, or the alerts table).
        #[arg(long)]
        alert: i64,
        /// The WAV file to write.
        #[arg(long, short)]
        out: PathBuf,
        /// Audio before the alert's first and after its last anomalous frame; by default the kept margin
        /// of the retention policy in force.
        #[arg(long, value_parser = humantime::parse_duration)]
        margin: Option<Duration>,
        /// Longest clip written, from the start of the alert's window (a long alert is hours of audio).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
        max_duration: Duration,
    },
}

/// Silence stands in for a missing stretch up to this long, so that what is heard keeps its timing;
/// longer gaps are closed up (and reported).
const MAX_FILLED_GAP: Duration = Duration::from_secs(60);

pub async fn run(command: Command) -> anyhow::Result<()> {
    let Command::Export {
        database,
        alert,
        out,
        margin,
        max_duration,
    } = command;
    let client = database::connect(&database.url).await?;
    let margin = match margin {
        Some(margin) => margin,
        None => {
            auscult_store::lifecycle_status(&client, SystemTime::now())
                .await
                .context("reading the retention policy in force")?
                .policy
                .kept_margin
        }
    };
    // Frames are at least 10 ms long (the shortest a gateway sends): a bound on how many to read.
    let max_frames = i64::try_from(max_duration.as_millis() / 10 + 1).unwrap_or(i64::MAX);
    let Some(audio) = auscult_store::alert_audio(&client, alert, margin, max_frames)
        .await
        .with_context(|| format!("reading the audio of alert {alert}"))?
    else {
        bail!("no alert {alert}");
    };
    if audio.frames.is_empty() {
        bail!(
            "alert {alert} ({}/{}): no audio is stored for it any more (raw audio and kept audio have both \
             passed their retention)",
            audio.device_id,
            audio.sensor_id
        );
    }
    let written = write_wav(&audio, &out, max_duration)
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "{}: {:.1} s of {}/{} from {} to {} ({} frame(s){}{})",
        out.display(),
        written.seconds,
        audio.device_id,
        audio.sensor_id,
        humantime::format_rfc3339_millis(audio.frames[0].captured_at),
        humantime::format_rfc3339_millis(written.last_captured_at),
        written.frames,
        if written.skipped > 0 {
            format!(", {} in another format left out", written.skipped)
        } else {
            String::new()
        },
        if written.gaps > 0 {
            format!(", {} gap(s) in the recording", written.gaps)
        } else {
            String::new()
        },
    );
    if audio.truncated || written.truncated {
        eprintln!(
            "the alert's window is longer than --max-duration {}; only its start was written",
            humantime::format_duration(max_duration)
        );
    }
    Ok(())
}

struct Written {
    frames: usize,
    skipped: usize,
    gaps: usize,
    seconds: f64,
    last_captured_at: SystemTime,
    truncated: bool,
}

/// Writes the frames that share the first frame's rate and channels, in order: 16-bit PCM when every frame
/// is, 32-bit float otherwise.
fn write_wav(audio: &AlertAudio, out: &Path, max_duration: Duration) -> anyhow::Result<Written> {
    let first = &audio.frames[0].audio;
    let (rate, channels) = (first.sample_rate_hz, first.channels);
    if rate == 0 || channels == 0 {
        bail!("the stored frames have no sample rate or channel count");
    }
    let same_format =
        |f: &&ClipFrame| f.audio.sample_rate_hz == rate && f.audio.channels == channels;
    let frames: Vec<&ClipFrame> = audio.frames.iter().filter(same_format).collect();
    let all_pcm = frames
        .iter()
        .all(|f| f.audio.encoding == SampleEncoding::PcmS16le);
    let spec = hound::WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample: if all_pcm { 16 } else { 32 },
        sample_format: if all_pcm {
            hound::SampleFormat::Int
        } else {
            hound::SampleFormat::Float
        },
    };
    let mut writer = hound::WavWriter::create(out, spec)?;
    let max_samples = (max_duration.as_secs_f64() * f64::from(rate)) as u64;
    let mut written_samples = 0u64; // per channel
    let mut gaps = 0;
    let mut expected_next: Option<SystemTime> = None;
    let mut last_captured_at = frames[0].captured_at;
    let mut truncated = false;
    let mut frames_written = 0;
    for frame in &frames {
        if let Some(expected) = expected_next
            && let Ok(gap) = frame.captured_at.duration_since(expected)
            && gap > Duration::from_millis(20)
        {
            gaps += 1;
            let silence = (gap.min(MAX_FILLED_GAP).as_secs_f64() * f64::from(rate)) as u64;
            for _ in
                0..silence.min(max_samples.saturating_sub(written_samples)) * u64::from(channels)
            {
                if all_pcm {
                    writer.write_sample(0i16)?;
                } else {
                    writer.write_sample(0f32)?;
                }
            }
            written_samples += silence;
        }
        let values = decode(&frame.audio.samples, frame.audio.encoding);
        let per_channel = (values.len() / usize::from(channels)) as u64;
        if written_samples + per_channel > max_samples {
            truncated = true;
            break;
        }
        for value in values {
            match value {
                Sample::Pcm(v) if all_pcm => writer.write_sample(v)?,
                Sample::Pcm(v) => writer.write_sample(f32::from(v) / 32_768.0)?,
                Sample::Float(v) => writer.write_sample(v)?,
            }
        }
        written_samples += per_channel;
        frames_written += 1;
        last_captured_at = frame.captured_at;
        expected_next =
            Some(frame.captured_at + Duration::from_secs_f64(per_channel as f64 / f64::from(rate)));
    }
    writer.finalize()?;
    Ok(Written {
        frames: frames_written,
        skipped: audio.frames.len() - frames.len(),
        gaps,
        seconds: written_samples as f64 / f64::from(rate),
        last_captured_at,
        truncated,
    })
}

enum Sample {
    Pcm(i16),
    Float(f32),
}

fn decode(bytes: &[u8], encoding: SampleEncoding) -> Vec<Sample> {
    match encoding {
        SampleEncoding::PcmS16le => bytes
            .chunks_exact(2)
            .map(|b| Sample::Pcm(i16::from_le_bytes([b[0], b[1]])))
            .collect(),
        SampleEncoding::F32le => bytes
            .chunks_exact(4)
            .map(|b| Sample::Float(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            .collect(),
    }
}
