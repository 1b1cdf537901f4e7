//! The speech front-end: WAV files read as mono f32 ([`read_wav`]), resampled to 16 kHz
//! ([`resample`]), turned into 80 log-mel features every 10 ms ([`LogMel`]), normalized per
//! utterance ([`normalize`]) and masked for training ([`SpecAugment`]); [`features`] chains
//! the first four for one file.

use crate::{Error, Result};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use realfft::{RealFftPlanner, RealToComplex};
use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};
use std::path::Path;
use std::sync::Arc;

/// The sample rate of the features, Hz.
pub const SAMPLE_RATE: u32 = 16_000;
/// Mel bins per frame.
pub const N_MELS: usize = 80;
/// Samples per analysis window: 25 ms at 16 kHz.
pub const WIN_LEN: usize = 400;
/// Samples between the starts of consecutive windows: 10 ms at 16 kHz.
pub const HOP_LEN: usize = 160;
/// FFT length; each window is zero-padded to it.
pub const N_FFT: usize = 512;
/// The highest frequency the mel filters cover, Hz: the Nyquist frequency of 16 kHz.
pub const F_MAX: f64 = 8000.0;
/// Energies are clamped to at least this before the logarithm.
pub const LOG_FLOOR: f32 = 1e-10;
/// ε added to each mel bin's variance before the square root in [`normalize`].
const NORM_EPS: f64 = 1e-5;
/// The chunk size handed to rubato's FFT resampler (a hint; it rounds it to the ratio).
const RESAMPLE_CHUNK: usize = 1024;

/// A WAV file's audio mixed down to one channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Wav {
    /// Samples per second, Hz (> 0).
    pub sample_rate: u32,
    /// The samples, `[frames]`, each the mean of the file's channels at that instant.
    pub samples: Vec<f32>,
}

impl Wav {
    /// The length in seconds.
    pub fn seconds(&self) -> f64 {
        self.samples.len() as f64 / self.sample_rate as f64
    }
}

/// Read a WAV file (RIFF/WAVE, via the `hound` crate) as mono f32.
///
/// Accepted encodings: PCM integers of 8 (unsigned, as WAV stores them), 16, 24 or 32 bits,
/// scaled by `1/2^(bits−1)` into [−1, 1) (8-bit `v` becomes `(v − 128)/128`); and 32-bit IEEE
/// float, taken as stored (normally within [−1, 1]). Plain and `WAVE_FORMAT_EXTENSIBLE`
/// headers are read. Several channels are averaged into one.
///
/// Errors (every message names the file): [`Error::DataMissing`] when it does not exist;
/// [`Error::Io`] when it cannot be read (a directory, say); [`Error::Data`] when it is not a
/// RIFF/WAVE file (empty, other bytes), its header or data are cut short ("truncated"), its
/// encoding is not one of the above (compressed, 64-bit float, ...), or it declares zero
/// channels or a zero sample rate.
pub fn read_wav(path: &Path) -> Result<Wav> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::DataMissing {
                path: path.to_path_buf(),
                hint: "expected a WAV file (PCM 8/16/24/32-bit integer or 32-bit float)"
                    .to_string(),
            })
        }
        Err(source) => {
            return Err(Error::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let p = path.display();
    if bytes.is_empty() {
        return Err(Error::Data(format!("{p} is empty; expected a WAV file")));
    }
    let wav_error = |e: hound::Error| {
        Error::Data(match e {
            // The bytes are in memory: reading them fails only when they run out.
            hound::Error::IoError(_) => format!(
                "{p}: truncated WAV file: its {} bytes end before the header or the data it \
                 declares",
                bytes.len()
            ),
            hound::Error::Unsupported => format!(
                "{p}: unsupported WAV encoding; expected PCM 8/16/24/32-bit integer or 32-bit \
                 float"
            ),
            e => format!("{p}: not a readable WAV file: {e}"),
        })
    };
    let mut reader = hound::WavReader::new(bytes.as_slice()).map_err(wav_error)?;
    let spec = reader.spec();
    if spec.sample_rate == 0 {
        return Err(Error::Data(format!(
            "{p}: the WAV header declares a sample rate of 0 Hz"
        )));
    }
    let channels = spec.channels as usize;
    let interleaved: Vec<f32> = match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Int, bits @ (8 | 16 | 24 | 32)) => {
            let scale = 1.0 / (1u64 << (bits - 1)) as f64;
            reader
                .samples::<i32>()
                .map(|s| s.map(|v| (v as f64 * scale) as f32))
                .collect::<std::result::Result<_, _>>()
        }
        (hound::SampleFormat::Float, 32) => reader.samples::<f32>().collect(),
        (format, bits) => {
            return Err(Error::Data(format!(
                "{p}: unsupported WAV encoding ({bits}-bit {format:?}); expected PCM \
                 8/16/24/32-bit integer or 32-bit float"
            )))
        }
    }
    .map_err(wav_error)?;
    let samples = if channels == 1 {
        interleaved
    } else {
        let k = 1.0 / channels as f32;
        interleaved
            .chunks_exact(channels)
            .map(|frame| frame.iter().sum::<f32>() * k)
            .collect()
    };
    Ok(Wav {
        sample_rate: spec.sample_rate,
        samples,
    })
}

/// Resample `samples` from `from_hz` to `to_hz` with rubato's synchronous FFT resampler
/// (`rubato::Fft`: overlap-add in the frequency domain with a Blackman–Harris anti-aliasing
/// filter; its start-up delay is trimmed, so the output is aligned with the input).
///
/// The output has `ceil(len · to_hz / from_hz)` samples; equal rates return a copy, an empty
/// input an empty output. Errors: [`Error::Config`] when a rate is 0.
pub fn resample(samples: &[f32], from_hz: u32, to_hz: u32) -> Result<Vec<f32>> {
    let config = |e: &dyn std::fmt::Display| {
        Error::Config(format!("resampling {from_hz} Hz to {to_hz} Hz: {e}"))
    };
    if from_hz == 0 || to_hz == 0 {
        return Err(config(&"sample rates must be positive"));
    }
    if from_hz == to_hz || samples.is_empty() {
        return Ok(samples.to_vec());
    }
    let mut resampler = Fft::<f32>::new(
        from_hz as usize,
        to_hz as usize,
        RESAMPLE_CHUNK,
        1,
        FixedSync::Both,
    )
    .map_err(|e| config(&e))?;
    let input = InterleavedSlice::new(samples, 1, samples.len()).map_err(|e| config(&e))?;
    let output = resampler
        .process_all(&input, samples.len(), None)
        .map_err(|e| config(&e))?;
    Ok(output.take_data())
}

/// The HTK mel scale: `2595 · log10(1 + f/700)` mels at `f` Hz (S. Young et al., "The HTK
/// Book", §5.4; not librosa's default Slaney scale).
fn hz_to_mel(f: f64) -> f64 {
    2595.0 * (1.0 + f / 700.0).log10()
}

/// The inverse of [`hz_to_mel`]: Hz at `m` mels.
fn mel_to_hz(m: f64) -> f64 {
    700.0 * (10f64.powf(m / 2595.0) - 1.0)
}

/// One triangular mel filter: weights of the power spectrum bins `start..start + weights.len()`.
#[derive(Debug, Clone)]
struct Filter {
    start: usize,
    weights: Vec<f32>,
}

/// Log-mel filterbank features of 16 kHz audio, with the FFT plan, window and filterbank
/// made once.
///
/// Each frame takes [`WIN_LEN`] = 400 samples (25 ms) every [`HOP_LEN`] = 160 (10 ms), with
/// no padding at the ends (Kaldi's `snip-edges`), so `len` samples give
/// `frames = 0` when `len < 400`, else `1 + (len − 400) / 160` (integer division); frame `t`
/// covers samples `160·t .. 160·t + 400`. The frame is multiplied by a periodic Hann window
/// `0.5 − 0.5·cos(2πn/400)` (`torch.hann_window(400)`), zero-padded to [`N_FFT`] = 512, and
/// its power spectrum `|X_k|²`, `k = 0..=256` (unnormalized DFT), weighted by [`N_MELS`] = 80
/// triangular filters. The filters follow torchaudio's `melscale_fbanks(mel_scale="htk",
/// norm=None)`: 82 points equally spaced on the HTK mel scale `2595·log10(1 + f/700)` from
/// 0 Hz to [`F_MAX`] = 8 kHz; filter `m` rises linearly (in Hz) from point `m` to 1 at point
/// `m + 1` and falls to 0 at point `m + 2`, evaluated at the bin frequencies `k · 16000/512`.
/// The output is `ln(max(energy, 1e-10))`.
///
/// `LogMel` is `Sync`: one can serve many threads.
pub struct LogMel {
    fft: Arc<dyn RealToComplex<f32>>,
    window: Vec<f32>,
    filters: Vec<Filter>,
}

impl std::fmt::Debug for LogMel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogMel")
            .field("n_mels", &self.filters.len())
            .finish_non_exhaustive()
    }
}

impl Default for LogMel {
    fn default() -> Self {
        Self::new()
    }
}

impl LogMel {
    /// Plan the FFT and build the window and the filterbank.
    pub fn new() -> LogMel {
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(N_FFT);
        let window = (0..WIN_LEN)
            .map(|n| {
                let c = (2.0 * std::f64::consts::PI * n as f64 / WIN_LEN as f64).cos();
                (0.5 - 0.5 * c) as f32
            })
            .collect();
        let mel_max = hz_to_mel(F_MAX);
        let points: Vec<f64> = (0..N_MELS + 2)
            .map(|i| mel_to_hz(mel_max * i as f64 / (N_MELS + 1) as f64))
            .collect();
        let bin_hz = |k: usize| k as f64 * SAMPLE_RATE as f64 / N_FFT as f64;
        let filters = points
            .windows(3)
            .map(|p| {
                let weight = |k: usize| {
                    let f = bin_hz(k);
                    ((f - p[0]) / (p[1] - p[0]))
                        .min((p[2] - f) / (p[2] - p[1]))
                        .max(0.0) as f32
                };
                let bins = 0..=N_FFT / 2;
                let start = bins.clone().find(|&k| weight(k) > 0.0).unwrap_or(0);
                let end = bins
                    .rev()
                    .find(|&k| weight(k) > 0.0)
                    .map_or(start, |k| k + 1);
                Filter {
                    start,
                    weights: (start..end).map(weight).collect(),
                }
            })
            .collect();
        LogMel {
            fft,
            window,
            filters,
        }
    }

    /// The number of frames of `len` samples: 0 when `len < 400`, else `1 + (len − 400) / 160`.
    pub fn n_frames(len: usize) -> usize {
        if len < WIN_LEN {
            0
        } else {
            1 + (len - WIN_LEN) / HOP_LEN
        }
    }

    /// The log-mel features of `samples` (16 kHz), row-major `[frames, 80]`,
    /// `frames =` [`LogMel::n_frames`]`(samples.len())`.
    pub fn compute(&self, samples: &[f32]) -> Vec<f32> {
        let n_frames = Self::n_frames(samples.len());
        let mut out = vec![0f32; n_frames * N_MELS];
        let mut frame = self.fft.make_input_vec();
        let mut spectrum = self.fft.make_output_vec();
        let mut scratch = self.fft.make_scratch_vec();
        let mut power = vec![0f32; spectrum.len()];
        for (t, row) in out.chunks_exact_mut(N_MELS).enumerate() {
            let src = &samples[t * HOP_LEN..t * HOP_LEN + WIN_LEN];
            for ((d, &s), &w) in frame.iter_mut().zip(src).zip(&self.window) {
                *d = s * w;
            }
            // The FFT uses its input as scratch: clear the padding every frame.
            frame[WIN_LEN..].fill(0.0);
            self.fft
                .process_with_scratch(&mut frame, &mut spectrum, &mut scratch)
                .expect("buffers made by the plan have its lengths");
            for (p, c) in power.iter_mut().zip(&spectrum) {
                *p = c.norm_sqr();
            }
            for (o, f) in row.iter_mut().zip(&self.filters) {
                let bins = &power[f.start..f.start + f.weights.len()];
                let e: f32 = bins.iter().zip(&f.weights).map(|(p, w)| p * w).sum();
                *o = e.max(LOG_FLOOR).ln();
            }
        }
        out
    }
}

/// Normalize features `[frames, 80]` (row-major) in place, each mel bin on its own over the
/// utterance's frames: `(x − mean) / sqrt(var + 1e-5)`, `var` the population variance
/// (computed in f64). A constant bin, and so a single frame, becomes zeros; no frames is a
/// no-op. The per-utterance normalization of apple/ml-sigma-reparam's speech model (there
/// masked over padding; here one utterance, unpadded).
///
/// Errors with [`Error::Data`] when `features.len()` is not a multiple of 80.
pub fn normalize(features: &mut [f32]) -> Result<()> {
    check_frames("normalize", features)?;
    let n = (features.len() / N_MELS) as f64;
    if n == 0.0 {
        return Ok(());
    }
    let mut mean = [0f64; N_MELS];
    for row in features.chunks_exact(N_MELS) {
        for (m, &x) in mean.iter_mut().zip(row) {
            *m += x as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n);
    let mut var = [0f64; N_MELS];
    for row in features.chunks_exact(N_MELS) {
        for ((v, &m), &x) in var.iter_mut().zip(&mean).zip(row) {
            *v += (x as f64 - m).powi(2);
        }
    }
    let scale = var.map(|v| 1.0 / (v / n + NORM_EPS).sqrt());
    for row in features.chunks_exact_mut(N_MELS) {
        for ((x, &m), &k) in row.iter_mut().zip(&mean).zip(&scale) {
            *x = ((*x as f64 - m) * k) as f32;
        }
    }
    Ok(())
}

/// Refuse features that are not whole `[frames, 80]` rows, naming `what` was given them.
fn check_frames(what: &str, features: &[f32]) -> Result<()> {
    if features.len().is_multiple_of(N_MELS) {
        Ok(())
    } else {
        Err(Error::Data(format!(
            "{what}: {} values are not [frames, {N_MELS}]",
            features.len()
        )))
    }
}

/// SpecAugment's frequency and time masking (D. S. Park et al., "SpecAugment: A Simple Data
/// Augmentation Method for Automatic Speech Recognition", Interspeech 2019, §2; time warping
/// is not done).
///
/// On features `[τ frames, ν = 80 bins]`: `n_freq_masks` times, a width `f` uniform in
/// `0..=min(F, ν)` and a start `f0` uniform in `0..=ν − f`, bins `f0..f0 + f` of every frame
/// set to 0; then `n_time_masks` times, a width `t` uniform in `0..=T` with
/// `T = min(time_width, floor(time_ratio · τ))` and a start `t0` uniform in `0..=τ − t`, frames
/// `t0..t0 + t` set to 0. Zero is the mean after [`normalize`]. The draws, in that order,
/// are the only use of the rng, so the result depends only on the features and its state.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SpecAugment {
    /// Frequency masks per utterance (`m_F`).
    pub n_freq_masks: usize,
    /// Largest frequency-mask width in mel bins (`F`).
    pub freq_width: usize,
    /// Time masks per utterance (`m_T`).
    pub n_time_masks: usize,
    /// Largest time-mask width in frames (`T`).
    pub time_width: usize,
    /// Largest time-mask width as a fraction of the utterance's frames (`p`).
    pub time_ratio: f64,
}

impl SpecAugment {
    /// The paper's LibriSpeech double policy (LD, Table 1): `m_F = 2, F = 27, m_T = 2,
    /// T = 100, p = 0.2`.
    pub const LD: SpecAugment = SpecAugment {
        n_freq_masks: 2,
        freq_width: 27,
        n_time_masks: 2,
        time_width: 100,
        time_ratio: 0.2,
    };

    /// Mask `features` (`[frames, 80]`, row-major) in place, drawing from `rng`.
    ///
    /// Errors with [`Error::Data`] when `features.len()` is not a multiple of 80.
    pub fn apply(&self, features: &mut [f32], rng: &mut ChaCha8Rng) -> Result<()> {
        check_frames("SpecAugment::apply", features)?;
        let frames = features.len() / N_MELS;
        let f_max = self.freq_width.min(N_MELS);
        for _ in 0..self.n_freq_masks {
            let f = rng.gen_range(0..=f_max);
            let f0 = rng.gen_range(0..=N_MELS - f);
            for row in features.chunks_exact_mut(N_MELS) {
                row[f0..f0 + f].fill(0.0);
            }
        }
        let t_max = self
            .time_width
            .min((self.time_ratio * frames as f64).floor() as usize)
            .min(frames);
        for _ in 0..self.n_time_masks {
            let t = rng.gen_range(0..=t_max);
            let t0 = rng.gen_range(0..=frames - t);
            features[t0 * N_MELS..(t0 + t) * N_MELS].fill(0.0);
        }
        Ok(())
    }
}

/// The normalized log-mel features of a WAV file: [`read_wav`], [`resample`] to 16 kHz,
/// [`LogMel::compute`], [`normalize`]; row-major `[frames, 80]`.
///
/// Errors: those of [`read_wav`]; [`Error::Data`] naming the file when it is shorter than one
/// 25 ms window at 16 kHz (no frames).
pub fn features(path: &Path, mel: &LogMel) -> Result<Vec<f32>> {
    let wav = read_wav(path)?;
    let samples = resample(&wav.samples, wav.sample_rate, SAMPLE_RATE)?;
    let mut feats = mel.compute(&samples);
    if feats.is_empty() {
        return Err(Error::Data(format!(
            "{}: {:.4} s of audio is shorter than one 25 ms window",
            path.display(),
            wav.seconds()
        )));
    }
    normalize(&mut feats)?;
    Ok(feats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idx::tests::TempDir;
    use rand::SeedableRng;
    use std::path::PathBuf;

    /// Write interleaved `samples` to `dir/name` with hound.
    fn write_wav<S: hound::Sample + Copy>(
        dir: &TempDir,
        name: &str,
        spec: hound::WavSpec,
        samples: &[S],
    ) -> PathBuf {
        let path = dir.0.join(name);
        let mut w = hound::WavWriter::create(&path, spec).unwrap();
        for &s in samples {
            w.write_sample(s).unwrap();
        }
        w.finalize().unwrap();
        path
    }

    fn spec(channels: u16, sample_rate: u32, bits: u16, float: bool) -> hound::WavSpec {
        hound::WavSpec {
            channels,
            sample_rate,
            bits_per_sample: bits,
            sample_format: if float {
                hound::SampleFormat::Float
            } else {
                hound::SampleFormat::Int
            },
        }
    }

    /// `n` samples of `amp · sin(2π · hz · i / rate)`.
    fn sine(hz: f64, rate: u32, n: usize, amp: f64) -> Vec<f32> {
        let w = 2.0 * std::f64::consts::PI * hz / rate as f64;
        (0..n)
            .map(|i| (amp * (w * i as f64).sin()) as f32)
            .collect()
    }

    #[test]
    fn reads_every_pcm_depth_and_float() {
        let dir = TempDir::new("audio-depths");
        for bits in [8u16, 16, 24, 32] {
            let full = 1i64 << (bits - 1);
            let values = [-full, -full / 2, 0, 1, full - 1].map(|v| v as i32);
            let path = write_wav(
                &dir,
                &format!("{bits}.wav"),
                spec(1, 8000, bits, false),
                &values,
            );
            let wav = read_wav(&path).unwrap();
            assert_eq!(wav.sample_rate, 8000);
            let expected = values.map(|v| (v as f64 / full as f64) as f32);
            assert_eq!(wav.samples, expected, "{bits}-bit");
            assert_eq!(wav.samples[0], -1.0);
        }
        let values = [-1.0f32, -0.25, 0.0, 0.5, 1.0];
        let path = write_wav(&dir, "float.wav", spec(1, 44100, 32, true), &values);
        let wav = read_wav(&path).unwrap();
        assert_eq!((wav.sample_rate, wav.samples), (44100, values.to_vec()));
        // 16-bit at 16 kHz round-trips exactly through the i16 grid.
        let s16: Vec<i16> = sine(440.0, 16000, 1600, 0.8)
            .iter()
            .map(|&x| (x * 32768.0) as i16)
            .collect();
        let path = write_wav(&dir, "sine.wav", spec(1, 16000, 16, false), &s16);
        let wav = read_wav(&path).unwrap();
        assert_eq!(wav.samples.len(), 1600);
        assert!((wav.seconds() - 0.1).abs() < 1e-12);
        for (&r, &w) in wav.samples.iter().zip(&s16) {
            assert_eq!(r, w as f32 / 32768.0);
        }
    }

    #[test]
    fn channels_are_averaged() {
        let dir = TempDir::new("audio-channels");
        // Stereo frames (L, R).
        let stereo = [1000i16, 3000, -2000, 2000, 16384, 16384];
        let path = write_wav(&dir, "stereo.wav", spec(2, 16000, 16, false), &stereo);
        let wav = read_wav(&path).unwrap();
        assert_eq!(wav.samples, [2000.0 / 32768.0, 0.0, 0.5]);
        let three = [0.3f32, 0.6, 0.9, -1.0, 0.5, -0.5];
        let path = write_wav(&dir, "three.wav", spec(3, 22050, 32, true), &three);
        let wav = read_wav(&path).unwrap();
        assert_eq!(wav.samples.len(), 2);
        assert!((wav.samples[0] - 0.6).abs() < 1e-6, "{:?}", wav.samples);
        assert!(
            (wav.samples[1] + 1.0 / 3.0).abs() < 1e-6,
            "{:?}",
            wav.samples
        );
    }

    #[test]
    fn bad_files_are_errors_naming_the_file() {
        let dir = TempDir::new("audio-bad");
        let good = write_wav(&dir, "good.wav", spec(1, 8000, 16, false), &[1i16, 2, 3, 4]);
        let bytes = std::fs::read(&good).unwrap();
        // The canonical 44-byte header: format tag at 20, channels at 22, sample rate at 24.
        assert_eq!((&bytes[36..40], bytes.len()), (&b"data"[..], 44 + 8));
        let fail = |name: &str, content: &[u8], needle: &str| {
            let path = dir.0.join(name);
            std::fs::write(&path, content).unwrap();
            let e = read_wav(&path).unwrap_err();
            assert!(matches!(e, Error::Data(_)), "{e:?}");
            let msg = e.to_string();
            assert!(msg.contains(name) && msg.contains(needle), "{msg}");
        };
        fail("empty.wav", &[], "is empty");
        fail(
            "garbage.wav",
            b"this is not a wave file at all, just text",
            "RIFF",
        );
        let mut not_wave = bytes.clone();
        not_wave[8..12].copy_from_slice(b"AVI ");
        fail("avi.wav", &not_wave, "WAVE");
        fail("short-header.wav", &bytes[..30], "truncated");
        fail("short-data.wav", &bytes[..49], "truncated");
        let patch = |at: usize, value: &[u8]| {
            let mut b = bytes.clone();
            b[at..at + value.len()].copy_from_slice(value);
            b
        };
        fail("zero-channels.wav", &patch(22, &[0, 0]), "zero channels");
        // The byte rate (at 28) too, which hound checks against the sample rate.
        fail("zero-rate.wav", &patch(24, &[0; 8]), "sample rate of 0 Hz");
        // Format tag 2: Microsoft ADPCM.
        fail("adpcm.wav", &patch(20, &[2, 0]), "unsupported WAV encoding");

        let e = read_wav(&dir.0.join("absent.wav")).unwrap_err();
        assert!(matches!(e, Error::DataMissing { .. }), "{e:?}");
        assert!(e.to_string().contains("absent.wav"), "{e}");
        let e = read_wav(&dir.0).unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e:?}");
    }

    /// The frequency, Hz, of the largest DFT magnitude of `x` sampled at `rate`.
    fn peak_hz(x: &[f32], rate: u32) -> f64 {
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(x.len());
        let mut input = x.to_vec();
        let mut out = fft.make_output_vec();
        fft.process(&mut input, &mut out).unwrap();
        let k = (0..out.len())
            .max_by(|&a, &b| out[a].norm_sqr().total_cmp(&out[b].norm_sqr()))
            .unwrap();
        k as f64 * rate as f64 / x.len() as f64
    }

    fn rms(x: &[f32]) -> f64 {
        (x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
    }

    #[test]
    fn resampling_keeps_frequency_level_and_length() {
        let input = sine(1000.0, 8000, 4000, 0.5);
        let out = resample(&input, 8000, 16000).unwrap();
        assert_eq!(out.len(), 8000);
        assert_eq!(peak_hz(&out, 16000), 1000.0);
        // Aligned with the input (the resampler's delay trimmed): the even output samples
        // are the input samples, away from the ends.
        for i in 200..3800 {
            assert!(
                (out[2 * i] - input[i]).abs() < 2e-3,
                "{i}: {} vs {}",
                out[2 * i],
                input[i]
            );
        }
        assert!((rms(&out[400..7600]) - 0.5 / 2f64.sqrt()).abs() < 1e-3);

        // 44.1 kHz down to 16 kHz: a 3 kHz tone survives, 7.5 kHz is below Nyquist too.
        let input = sine(3000.0, 44100, 44100, 0.5);
        let out = resample(&input, 44100, 16000).unwrap();
        assert_eq!(out.len(), 16000);
        assert_eq!(peak_hz(&out, 16000), 3000.0);
        // 12 kHz is above the new Nyquist frequency: filtered out, not aliased to 4 kHz.
        let out = resample(&sine(12000.0, 44100, 44100, 0.5), 44100, 16000).unwrap();
        assert!(rms(&out[1000..15000]) < 5e-3, "{}", rms(&out));

        // Lengths: ceil(len · to / from), also for inputs shorter than one chunk.
        for (len, from, to, expected) in [
            (1, 8000, 16000, 2),
            (3, 8000, 16000, 6),
            (7, 22050, 16000, 6),
            (1, 48000, 16000, 1),
        ] {
            let out = resample(&vec![0.25; len], from, to).unwrap();
            assert_eq!(out.len(), expected, "{len} samples {from} → {to}");
        }
        assert!(resample(&[], 8000, 16000).unwrap().is_empty());
        assert_eq!(resample(&input[..5], 16000, 16000).unwrap(), &input[..5]);
        let e = resample(&input, 0, 16000).unwrap_err();
        assert!(
            matches!(e, Error::Config(_)) && e.to_string().contains("0 Hz"),
            "{e}"
        );
    }

    #[test]
    fn frame_count() {
        for (len, frames) in [(0, 0), (399, 0), (400, 1), (559, 1), (560, 2), (16000, 98)] {
            assert_eq!(LogMel::n_frames(len), frames, "{len}");
            assert_eq!(
                LogMel::new().compute(&vec![0.1; len]).len(),
                frames * N_MELS
            );
        }
    }

    /// The log-mel features of one 400-sample frame from the definitions, in f64: a naive
    /// DFT and the HTK triangles at the bin frequencies.
    fn reference_frame(x: &[f32]) -> Vec<f64> {
        let pi2 = 2.0 * std::f64::consts::PI;
        let xw: Vec<f64> = x
            .iter()
            .enumerate()
            .map(|(n, &v)| v as f64 * (0.5 - 0.5 * (pi2 * n as f64 / 400.0).cos()))
            .collect();
        let power: Vec<f64> = (0..=256)
            .map(|k| {
                let (re, im) = xw.iter().enumerate().fold((0.0, 0.0), |(re, im), (n, &v)| {
                    let a = pi2 * (k * n) as f64 / 512.0;
                    (re + v * a.cos(), im - v * a.sin())
                });
                re * re + im * im
            })
            .collect();
        let mel_max = 2595.0 * (1.0 + 8000.0 / 700.0f64).log10();
        let hz = |i: usize| 700.0 * (10f64.powf(mel_max * i as f64 / 81.0 / 2595.0) - 1.0);
        (0..80)
            .map(|m| {
                let (lo, c, hi) = (hz(m), hz(m + 1), hz(m + 2));
                let e: f64 = (0..=256)
                    .map(|k| {
                        let f = k as f64 * 31.25;
                        let w = if f > lo && f <= c {
                            (f - lo) / (c - lo)
                        } else if f > c && f < hi {
                            (hi - f) / (hi - c)
                        } else {
                            0.0
                        };
                        w * power[k]
                    })
                    .sum();
                e.max(1e-10).ln()
            })
            .collect()
    }

    #[test]
    fn log_mel_matches_the_definition() {
        // A chirp-like mix with noise-like content over the whole band.
        let x: Vec<f32> = (0..720)
            .map(|i| {
                let t = i as f64 / 16000.0;
                (0.3 * (2e3 * t * t * 1e3).sin()
                    + 0.2 * (i as f64 * 1.7).sin() * (i as f64 * 0.013).cos())
                    as f32
            })
            .collect();
        let got = LogMel::new().compute(&x);
        assert_eq!(got.len(), 3 * N_MELS);
        for t in 0..3 {
            let want = reference_frame(&x[160 * t..160 * t + 400]);
            for (m, (&g, &w)) in got[t * N_MELS..(t + 1) * N_MELS]
                .iter()
                .zip(&want)
                .enumerate()
            {
                assert!((g as f64 - w).abs() < 1e-3, "frame {t} bin {m}: {g} vs {w}");
            }
        }
        // Silence is the floor.
        assert!(LogMel::new()
            .compute(&[0.0; 400])
            .iter()
            .all(|&v| v == LOG_FLOOR.ln()));
    }

    #[test]
    fn a_tone_peaks_in_its_mel_bin() {
        // 1 kHz is 2595·log10(1 + 1000/700) ≈ 1000.0 mel; the filter centres are at
        // i · mel(8000)/81 mel, i = 1..=80, so filter i − 1 peaks where i is nearest.
        let step = 2595.0 * (1.0 + 8000.0 / 700.0f64).log10() / 81.0;
        let mel_1k = 2595.0 * (1.0 + 1000.0 / 700.0f64).log10();
        let expected = (mel_1k / step).round() as usize - 1;
        assert_eq!(expected, 28);
        let feats = LogMel::new().compute(&sine(1000.0, 16000, 16000, 0.5));
        for row in feats.chunks_exact(N_MELS) {
            let peak = (0..N_MELS)
                .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                .unwrap();
            assert_eq!(peak, expected);
            // Far from the tone, the energy is orders of magnitude lower.
            assert!(
                row[expected] - row[60] > 10.0,
                "{} vs {}",
                row[expected],
                row[60]
            );
        }
        // A tone at filter 50's centre.
        let hz = 700.0 * (10f64.powf(51.0 * step / 2595.0) - 1.0);
        let feats = LogMel::new().compute(&sine(hz, 16000, 4000, 0.5));
        let row = &feats[..N_MELS];
        assert_eq!(
            (0..N_MELS).max_by(|&a, &b| row[a].total_cmp(&row[b])),
            Some(50)
        );
    }

    /// Per-bin mean and population variance of `[frames, 80]` features.
    fn bin_stats(f: &[f32]) -> Vec<(f64, f64)> {
        let n = (f.len() / N_MELS) as f64;
        (0..N_MELS)
            .map(|m| {
                let col = f.iter().skip(m).step_by(N_MELS).map(|&v| v as f64);
                let mean = col.clone().sum::<f64>() / n;
                (mean, col.map(|v| (v - mean).powi(2)).sum::<f64>() / n)
            })
            .collect()
    }

    #[test]
    fn normalize_gives_zero_mean_unit_variance() {
        let mut f: Vec<f32> = (0..50 * N_MELS)
            .map(|i| ((i * 37 % 101) as f32 * 0.3 - 7.0) * (1 + i % N_MELS) as f32)
            .collect();
        normalize(&mut f).unwrap();
        for (m, (mean, var)) in bin_stats(&f).into_iter().enumerate() {
            assert!(
                mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-4,
                "bin {m}: {mean} {var}"
            );
        }
        let mut constant = vec![-23.0; 7 * N_MELS];
        normalize(&mut constant).unwrap();
        assert!(constant.iter().all(|&v| v == 0.0));
        let mut one: Vec<f32> = (0..N_MELS).map(|i| i as f32).collect();
        normalize(&mut one).unwrap();
        assert!(one.iter().all(|&v| v == 0.0));
        normalize(&mut []).unwrap();
    }

    #[test]
    fn spec_augment_is_seeded_and_masks_bands() {
        let frames = 200;
        let ones = vec![1.0f32; frames * N_MELS];
        let aug = SpecAugment::LD;
        let run = |a: &SpecAugment, seed| {
            let mut f = ones.clone();
            a.apply(&mut f, &mut ChaCha8Rng::seed_from_u64(seed))
                .unwrap();
            f
        };
        assert_eq!(run(&aug, 1), run(&aug, 1));
        assert_ne!(run(&aug, 1), run(&aug, 2));
        let none = SpecAugment {
            freq_width: 0,
            time_width: 0,
            ..aug
        };
        assert_eq!(run(&none, 1), ones);
        for seed in 0..20 {
            let f = run(&aug, seed);
            assert_eq!(f.len(), ones.len());
            let zero_bins: Vec<usize> = (0..N_MELS)
                .filter(|&m| (0..frames).all(|t| f[t * N_MELS + m] == 0.0))
                .collect();
            let zero_frames: Vec<usize> = (0..frames)
                .filter(|&t| f[t * N_MELS..(t + 1) * N_MELS].iter().all(|&v| v == 0.0))
                .collect();
            assert!(zero_bins.len() <= 2 * 27, "{zero_bins:?}");
            // T = min(100, 0.2 · 200) = 40.
            assert!(zero_frames.len() <= 2 * 40, "{zero_frames:?}");
            // Every other value is untouched: masks are whole bands.
            for t in 0..frames {
                for m in 0..N_MELS {
                    let masked = zero_bins.contains(&m) || zero_frames.contains(&t);
                    assert_eq!(f[t * N_MELS + m], if masked { 0.0 } else { 1.0 });
                }
            }
        }
        // Some seed masks something in both directions (20 seeds; widths of 0 are rare).
        let masked = (0..20)
            .map(|s| run(&aug, s))
            .filter(|f| f.contains(&0.0))
            .count();
        assert!(masked >= 18, "{masked}");
        // Short utterances and no frames keep their shape.
        let mut short = vec![1.0; 3 * N_MELS];
        aug.apply(&mut short, &mut ChaCha8Rng::seed_from_u64(0))
            .unwrap();
        assert_eq!(short.len(), 3 * N_MELS);
        aug.apply(&mut [], &mut ChaCha8Rng::seed_from_u64(0))
            .unwrap();
        // Values that are not whole [frames, 80] rows are refused, not masked.
        let mut ragged = vec![1.0; N_MELS + 1];
        let err = aug
            .apply(&mut ragged, &mut ChaCha8Rng::seed_from_u64(0))
            .unwrap_err();
        assert!(err.to_string().contains("81 values"), "{err}");
        let err = normalize(&mut ragged).unwrap_err();
        assert!(err.to_string().contains("normalize"), "{err}");
        assert!(ragged.iter().all(|&v| v == 1.0));
    }

    #[test]
    fn features_of_a_file() {
        let dir = TempDir::new("audio-features");
        let s16: Vec<i16> = sine(500.0, 8000, 8000, 0.5)
            .iter()
            .map(|&x| (x * 32768.0) as i16)
            .collect();
        let path = write_wav(&dir, "tone.wav", spec(1, 8000, 16, false), &s16);
        let f = features(&path, &LogMel::new()).unwrap();
        // 1 s at 16 kHz: 1 + (16000 − 400) / 160 = 98 frames.
        assert_eq!(f.len(), 98 * N_MELS);
        assert!(f.iter().all(|v| v.is_finite()));
        for (mean, var) in bin_stats(&f) {
            assert!(mean.abs() < 1e-5 && var <= 1.0 + 1e-5, "{mean} {var}");
        }
        let short = write_wav(&dir, "short.wav", spec(1, 8000, 16, false), &[0i16; 199]);
        let e = features(&short, &LogMel::new()).unwrap_err().to_string();
        assert!(
            e.contains("short.wav") && e.contains("shorter than one 25 ms window"),
            "{e}"
        );
    }
}
