//! Decoder: arbitrary bytes, fed in arbitrary pieces. Must never panic, never grow the buffer
//! past one maximal frame, and every frame it accepts must re-encode to something that decodes
//! to the same frame.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use zrep_proto::frame::{HEADER_LEN, MAX_CONTROL_PAYLOAD};
use zrep_proto::{Frame, decode};

fuzz_target!(|data: &[u8]| {
    let Some((&piece, bytes)) = data.split_first() else {
        return;
    };
    let piece = usize::from(piece).max(1);
    let mut buf = BytesMut::new();
    for part in bytes.chunks(piece) {
        buf.extend_from_slice(part);
        loop {
            match decode(&mut buf) {
                Ok(Some(frame)) => check_round_trip(&frame),
                Ok(None) => break,
                Err(_) => return,
            }
            assert!(buf.capacity() <= HEADER_LEN + MAX_CONTROL_PAYLOAD + bytes.len());
        }
    }
});

fn check_round_trip(frame: &Frame) {
    let encoded = frame.to_bytes().expect("a decoded frame re-encodes");
    let mut again = BytesMut::from(&encoded[..]);
    let back = decode(&mut again)
        .expect("re-encoded frame decodes")
        .expect("re-encoded frame is complete");
    assert_eq!(&back, frame);
    assert!(again.is_empty());
}
