//! The daemon↔supervisor control protocol (`thaw-runtime`'s control
//! frames, both directions) and the page socket's answers: bytes from the
//! other side of a socket, one end of which is inside a sandbox.

use thaw_runtime::control::{
    encode_frame, pages, read_frame_sync, ControlError, FromSupervisor, ToSupervisor,
};

/// Reads `data` as a stream of control frames, once as the daemon reads
/// them ([`FromSupervisor`]) and once as the supervisor does
/// ([`ToSupervisor`]), until an error; every frame that decodes encodes
/// back to one that decodes to the same message. Then reads it as the page
/// socket's answers and requests.
pub fn control_frames(data: &[u8]) {
    let mut r = std::io::Cursor::new(data);
    for _ in 0..64 {
        match read_frame_sync::<_, FromSupervisor>(&mut r) {
            Ok((msg, body)) => round_trip(&msg, &body),
            Err(_) => break,
        }
    }
    let mut r = std::io::Cursor::new(data);
    for _ in 0..64 {
        match read_frame_sync::<_, ToSupervisor>(&mut r) {
            Ok((msg, body)) => round_trip(&msg, &body),
            Err(_) => break,
        }
    }

    let mut r = std::io::Cursor::new(data);
    for n in [0usize, 1, 12, 4096] {
        let mut buf = vec![0u8; n];
        if pages::read_answer(&mut r, &mut buf).is_err() {
            break;
        }
    }
    for req in data.chunks_exact(12).take(16) {
        let mut b = [0u8; 12];
        b.copy_from_slice(req);
        let (offset, len) = pages::parse_request(&b);
        let mut again = Vec::new();
        pages::request(&mut again, offset, len).expect("write to a Vec");
        assert_eq!(again, req, "a page request did not round-trip");
    }
}

fn round_trip<H>(msg: &H, body: &[u8])
where
    H: serde::Serialize + for<'de> serde::Deserialize<'de> + PartialEq + std::fmt::Debug,
{
    match encode_frame(msg, body) {
        Ok(frame) => {
            let (again, again_body): (H, Vec<u8>) =
                read_frame_sync(&mut std::io::Cursor::new(frame))
                    .expect("an encoded frame decodes");
            assert_eq!(&again, msg, "a frame's header did not round-trip");
            assert_eq!(again_body, body, "a frame's body did not round-trip");
        }
        // Re-encoding can grow the header (escapes) past the limit.
        Err(ControlError::FrameTooLarge(_)) => {}
        Err(e) => panic!("a decoded frame does not encode: {e}"),
    }
}
