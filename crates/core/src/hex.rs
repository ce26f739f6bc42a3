//! Lowercase hexadecimal, for digests in records, logs and JSON.

/// `bytes` as lowercase hex.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    encode_to(bytes, &mut out);
    // Only ASCII digits and letters were written.
    String::from_utf8(out).unwrap_or_default()
}

/// `bytes` as lowercase hex, written to the start of `out` (as much as
/// fits: two digits per byte).
pub fn encode_to(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0xf)];
    }
}

/// Hex (either case) to bytes; `None` for odd lengths or other characters.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    let text = text.as_bytes();
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let nibble = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
    text.chunks_exact(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

/// Hex of exactly 32 bytes (a SHA-256 digest).
pub fn decode32(text: &str) -> Option<[u8; 32]> {
    decode(text)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trips() {
        assert_eq!(super::encode(&[0x00, 0xab, 0x7f]), "00ab7f");
        let mut out = [0u8; 6];
        super::encode_to(&[0x00, 0xab, 0x7f], &mut out);
        assert_eq!(&out, b"00ab7f");
        assert_eq!(super::decode("00AB7f"), Some(vec![0x00, 0xab, 0x7f]));
        assert_eq!(super::decode("0"), None);
        assert_eq!(super::decode("zz"), None);
        assert!(super::decode32(&"ab".repeat(32)).is_some());
        assert!(super::decode32("abab").is_none());
    }
}
