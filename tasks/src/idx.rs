//! IDX files: the format of MNIST and Fashion-MNIST, plain or gzipped.
//!
//! The format (Y. LeCun, C. Cortes, C. J. C. Burges, "The MNIST database of handwritten
//! digits", <http://yann.lecun.com/exdb/mnist/>, section "FILE FORMATS FOR THE MNIST
//! DATABASE"): two zero bytes; a type byte (0x08 unsigned byte, 0x09 signed byte, 0x0B i16,
//! 0x0C i32, 0x0D f32, 0x0E f64); a byte with the number of dimensions; each dimension as a
//! big-endian u32; then the elements, row-major (the last dimension varies fastest). Only
//! unsigned bytes (0x08) are read here: the type of every MNIST-like image and label file.

use crate::{Error, Result};
use std::io::Read;
use std::path::Path;

/// The first two bytes of a gzip stream (RFC 1952).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The contents of an IDX file of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idx {
    /// The dimensions, outermost first (`[n, height, width]` for images, `[n]` for labels).
    pub dims: Vec<usize>,
    /// The elements, row-major; `data.len()` is the product of `dims`.
    pub data: Vec<u8>,
}

/// The name of an IDX type byte, for error messages.
fn type_name(t: u8) -> &'static str {
    match t {
        0x08 => "unsigned byte",
        0x09 => "signed byte",
        0x0B => "i16",
        0x0C => "i32",
        0x0D => "f32",
        0x0E => "f64",
        _ => "no IDX type",
    }
}

/// `bytes` as space-separated hex (`00 00 08 03`).
fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Check the first four bytes of an IDX file (fewer when it is that short): the magic, the
/// element type and a rank of at least 1, which is returned. `what` says whose bytes these
/// are in messages ("bytes", "unpacked bytes").
fn check_start(path: &Path, start: &[u8], what: &str) -> Result<usize> {
    let p = path.display();
    if start.iter().take(2).any(|&b| b != 0) {
        return Err(Error::Data(format!(
            "{p} is not an IDX file: its {what} start with {}, expected 00 00, then the type \
             byte 08 and the number of dimensions (the MNIST format)",
            hex(&start[..start.len().min(4)])
        )));
    }
    if let Some(&t) = start.get(2) {
        if t != 0x08 {
            return Err(Error::Data(format!(
                "{p}: IDX element type 0x{t:02x} ({}) is not supported; only 0x08 (unsigned byte) is",
                type_name(t)
            )));
        }
    }
    match start.get(3) {
        None => Err(Error::Data(format!(
            "{p}: truncated IDX file: its {what} are {} long, shorter than the 4-byte start of \
             the header",
            start.len()
        ))),
        Some(0) => Err(Error::Data(format!(
            "{p}: the IDX header declares 0 dimensions; expected at least 1"
        ))),
        Some(&rank) => Ok(rank as usize),
    }
}

/// The dimensions in `dim_bytes` (big-endian u32s) and the number of data bytes they
/// declare; an error when that number overflows `usize`.
fn parse_dims(path: &Path, dim_bytes: &[u8]) -> Result<(Vec<usize>, usize)> {
    let dims: Vec<usize> = dim_bytes
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let size = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            Error::Data(format!(
                "{}: the IDX dimensions {dims:?} declare more bytes than memory can address",
                path.display()
            ))
        })?;
    Ok((dims, size))
}

/// The error of a header cut short: `found` of its `need` bytes are there.
fn short_header(path: &Path, what: &str, need: usize, found: usize) -> Error {
    Error::Data(format!(
        "{}: truncated IDX file: its {what} are {found} long, shorter than its {need}-byte header",
        path.display()
    ))
}

/// Errors for data that is shorter or longer than the header declares.
fn check_len(path: &Path, dims: &[usize], expected: usize, found: usize) -> Result<()> {
    let p = path.display();
    if found < expected {
        return Err(Error::Data(format!(
            "{p}: truncated IDX file: dimensions {dims:?} need {expected} bytes of data, found {found}"
        )));
    }
    if found > expected {
        return Err(Error::Data(format!(
            "{p}: {} trailing bytes after the {expected} bytes of data that the IDX dimensions \
             {dims:?} declare",
            found - expected
        )));
    }
    Ok(())
}

/// Read an IDX file of unsigned bytes; gzipped files (starting with the gzip magic `1f 8b`,
/// one or more members) are decompressed.
///
/// Errors ([`Error::Data`] unless said otherwise; every message names the file):
/// [`Error::DataMissing`] when the file does not exist; [`Error::Io`] when it cannot be read
/// (a directory, say); a corrupt or truncated gzip stream; a wrong magic (the first bytes are
/// not `00 00`), with the bytes found; an element type other than 0x08; zero dimensions;
/// dimensions whose product overflows; a header cut short; fewer data bytes than the
/// dimensions declare (truncated) or more (trailing bytes). The declared size is checked
/// against the bytes actually present before anything of that size is allocated, so a tiny
/// file declaring huge dimensions is an error, not an out-of-memory abort.
pub fn read_idx(path: &Path) -> Result<Idx> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::DataMissing {
                path: path.to_path_buf(),
                hint: "expected an IDX file (the MNIST format), plain or gzipped".to_string(),
            })
        }
        Err(source) => {
            return Err(Error::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if bytes.starts_with(&GZIP_MAGIC) {
        read_gzipped(path, &bytes)
    } else {
        read_plain(path, bytes)
    }
}

/// An IDX file held in memory as it is on disk.
fn read_plain(path: &Path, mut bytes: Vec<u8>) -> Result<Idx> {
    let rank = check_start(path, &bytes[..bytes.len().min(4)], "bytes")?;
    let header_len = 4 + 4 * rank;
    if bytes.len() < header_len {
        return Err(short_header(path, "bytes", header_len, bytes.len()));
    }
    let (dims, expected) = parse_dims(path, &bytes[4..header_len])?;
    check_len(path, &dims, expected, bytes.len() - header_len)?;
    bytes.drain(..header_len);
    Ok(Idx { dims, data: bytes })
}

/// Read from `reader` until `buf` is full or the stream ends; the number of bytes read.
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// An IDX file compressed with gzip, held in memory compressed.
fn read_gzipped(path: &Path, compressed: &[u8]) -> Result<Idx> {
    let corrupt = |e: std::io::Error| {
        Error::Data(format!(
            "{}: corrupt or truncated gzip data ({e}); fetch the file again",
            path.display()
        ))
    };
    let what = "unpacked bytes";
    let mut decoder = flate2::read::MultiGzDecoder::new(compressed);
    let mut start = [0u8; 4];
    let got = read_up_to(&mut decoder, &mut start).map_err(corrupt)?;
    let rank = check_start(path, &start[..got], what)?;
    let mut dim_bytes = vec![0u8; 4 * rank];
    let got = read_up_to(&mut decoder, &mut dim_bytes).map_err(corrupt)?;
    if got < dim_bytes.len() {
        return Err(short_header(path, what, 4 + dim_bytes.len(), 4 + got));
    }
    let (dims, expected) = parse_dims(path, &dim_bytes)?;
    // Reserve what the gzip trailer says the file unpacks to (its size modulo 2³²), never
    // more than the header declares; a failed reservation only means growing as data comes.
    let unpacked = compressed.len().checked_sub(4).map_or(0, |i| {
        let t = &compressed[i..];
        u32::from_le_bytes([t[0], t[1], t[2], t[3]]) as usize
    });
    let mut data = Vec::new();
    let _ = data.try_reserve_exact(expected.min(unpacked.saturating_sub(4 + 4 * rank)));
    (&mut decoder)
        .take(expected as u64)
        .read_to_end(&mut data)
        .map_err(corrupt)?;
    let trailing = if data.len() == expected {
        std::io::copy(&mut decoder, &mut std::io::sink()).map_err(corrupt)? as usize
    } else {
        0
    };
    check_len(path, &dims, expected, data.len() + trailing)?;
    Ok(Idx { dims, data })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh directory under the system temp dir, removed when dropped.
    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        pub(crate) fn new(name: &str) -> TempDir {
            static COUNT: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "tasks-{name}-{}-{}",
                std::process::id(),
                COUNT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The bytes of an IDX file of unsigned bytes.
    pub(crate) fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 0, 0x08, dims.len() as u8];
        for d in dims {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b.extend_from_slice(data);
        b
    }

    pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    /// Write `bytes` to `dir/name` and read it back.
    fn read_back(dir: &TempDir, name: &str, bytes: &[u8]) -> Result<Idx> {
        let path = dir.0.join(name);
        std::fs::write(&path, bytes).unwrap();
        read_idx(&path)
    }

    /// The error message of reading `bytes` both plain and gzipped: both must fail, each
    /// naming its file and containing every one of `needles`.
    fn both_fail(dir: &TempDir, name: &str, bytes: &[u8], needles: &[&str]) {
        for (file, b) in [
            (format!("{name}.idx"), bytes.to_vec()),
            (format!("{name}.idx.gz"), gzip(bytes)),
        ] {
            let e = read_back(dir, &file, &b).expect_err(&file).to_string();
            assert!(e.contains(&file), "{e}");
            for n in needles {
                assert!(e.contains(n), "{file}: {e:?} lacks {n:?}");
            }
        }
    }

    #[test]
    fn round_trip_plain_and_gzipped() {
        let dir = TempDir::new("idx-round-trip");
        let data: Vec<u8> = (0..2 * 3 * 4).map(|i| (i * 7 % 256) as u8).collect();
        let bytes = idx_bytes(&[2, 3, 4], &data);
        let want = Idx {
            dims: vec![2, 3, 4],
            data: data.clone(),
        };
        assert_eq!(read_back(&dir, "a.idx", &bytes).unwrap(), want);
        assert_eq!(read_back(&dir, "a.idx.gz", &gzip(&bytes)).unwrap(), want);
        // Two gzip members concatenated are one file (as `cat a.gz b.gz` makes).
        let (head, tail) = bytes.split_at(10);
        let two = [gzip(head), gzip(tail)].concat();
        assert_eq!(read_back(&dir, "two.idx.gz", &two).unwrap(), want);
        // Rank 1, and a file with no elements.
        let labels = idx_bytes(&[5], &[9, 0, 0, 3, 1]);
        let got = read_back(&dir, "l.idx", &labels).unwrap();
        assert_eq!((got.dims, got.data), (vec![5], vec![9, 0, 0, 3, 1]));
        let empty = read_back(&dir, "e.idx.gz", &gzip(&idx_bytes(&[0, 28], &[]))).unwrap();
        assert_eq!((empty.dims, empty.data.len()), (vec![0, 28], 0));
    }

    #[test]
    fn missing_file_is_data_missing() {
        let dir = TempDir::new("idx-missing");
        let e = read_idx(&dir.0.join("nope")).unwrap_err();
        assert!(matches!(e, Error::DataMissing { .. }), "{e:?}");
        assert!(e.to_string().contains("nope"), "{e}");
        let e = read_idx(&dir.0).unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "a directory: {e:?}");
    }

    #[test]
    fn wrong_magic_names_the_bytes() {
        let dir = TempDir::new("idx-magic");
        both_fail(
            &dir,
            "zip",
            b"PK\x03\x04rest of a zip",
            &["not an IDX file", "50 4b 03 04", "expected 00 00"],
        );
        both_fail(&dir, "short", b"P", &["not an IDX file", "50"]);
    }

    #[test]
    fn wrong_type_is_refused() {
        let dir = TempDir::new("idx-type");
        let mut f32_file = idx_bytes(&[1], &[0, 0, 0, 0]);
        f32_file[2] = 0x0D;
        both_fail(&dir, "f32", &f32_file, &["0x0d", "f32", "only 0x08"]);
        let mut rank0 = idx_bytes(&[], &[]);
        rank0[3] = 0;
        both_fail(&dir, "rank0", &rank0, &["0 dimensions"]);
    }

    #[test]
    fn truncated_and_trailing_bytes_are_errors() {
        let dir = TempDir::new("idx-length");
        let data = [1u8; 12];
        both_fail(
            &dir,
            "short-data",
            &idx_bytes(&[3, 4], &data[..11]),
            &["truncated", "need 12 bytes of data, found 11"],
        );
        both_fail(
            &dir,
            "long",
            &[idx_bytes(&[3, 4], &data), vec![0, 0, 0]].concat(),
            &["3 trailing bytes", "12 bytes of data"],
        );
        let header = idx_bytes(&[3, 4], &[]);
        both_fail(
            &dir,
            "short-header",
            &header[..9],
            &["truncated", "12-byte header"],
        );
        both_fail(
            &dir,
            "two-bytes",
            &[0, 0],
            &["truncated", "2 long", "4-byte"],
        );
        both_fail(&dir, "nothing", &[], &["truncated"]);
    }

    #[test]
    fn huge_declared_dims_are_an_error_not_an_abort() {
        let dir = TempDir::new("idx-huge");
        // 4 × 4 GiB-ish: overflows usize.
        both_fail(
            &dir,
            "overflow",
            &idx_bytes(&[u32::MAX; 4], &[1, 2, 3]),
            &["more bytes than memory can address"],
        );
        // 2³² − 1 × 2³² − 1 bytes (about 16 EiB) declared, 3 present.
        both_fail(
            &dir,
            "huge",
            &idx_bytes(&[u32::MAX, u32::MAX], &[1, 2, 3]),
            &["truncated", "found 3"],
        );
    }

    #[test]
    fn corrupt_gzip_is_an_error() {
        let dir = TempDir::new("idx-gzip");
        let good = gzip(&idx_bytes(&[100], &(0..100).collect::<Vec<u8>>()));
        // Cut short.
        let e = read_back(&dir, "cut.gz", &good[..good.len() - 10]).unwrap_err();
        assert!(
            e.to_string().contains("gzip") && e.to_string().contains("cut.gz"),
            "{e}"
        );
        // A flipped byte in the compressed stream (or CRC).
        let mut flipped = good.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0xff;
        let e = read_back(&dir, "flipped.gz", &flipped).unwrap_err();
        assert!(e.to_string().contains("gzip"), "{e}");
        // The gzip magic and nothing else.
        let e = read_back(&dir, "magic-only.gz", &GZIP_MAGIC).unwrap_err();
        assert!(e.to_string().contains("gzip"), "{e}");
        // Garbage after a complete gzip member.
        let e = read_back(
            &dir,
            "garbage.gz",
            &[good.clone(), b"garbage".to_vec()].concat(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("gzip"), "{e}");
    }
}
