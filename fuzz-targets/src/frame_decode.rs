//! `frame_decode`: the wire codec on arbitrary bytes, for every type that crosses a wire.

use std::fmt::Debug;

use clustd_core::Message;
use clustd_core::codec::{self, MAX_FRAME_LEN};
use clustd_core::driver::{FromDriver, ToDriver};
use clustd_transport::session::{Hello, Reply};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Decodes `data` as each frame type; what decodes must re-encode to a frame that decodes
/// to the same value, and no strict prefix of that frame may decode.
pub fn frame_decode(data: &[u8]) {
    check::<Message>(data);
    check::<ToDriver>(data);
    check::<FromDriver>(data);
    check::<Hello>(data);
    check::<Reply>(data);
}

fn check<T: Serialize + DeserializeOwned + PartialEq + Debug>(data: &[u8]) {
    let Ok(value) = codec::decode::<T>(data) else {
        return;
    };
    assert!(data.len() <= MAX_FRAME_LEN, "oversized frame decoded");
    let frame = codec::encode(&value)
        .unwrap_or_else(|e| panic!("decoded value {value:?} does not re-encode: {e}"));
    assert!(
        frame.len() <= data.len(),
        "re-encoding grew from {} to {} bytes: {value:?}",
        data.len(),
        frame.len()
    );
    let again: T = codec::decode(&frame)
        .unwrap_or_else(|e| panic!("re-encoded {value:?} does not decode: {e}"));
    assert_eq!(again, value, "round trip changed the value");
    for cut in 0..frame.len() {
        assert!(
            codec::decode::<T>(&frame[..cut]).is_err(),
            "a {cut}-byte prefix of the frame of {value:?} decodes"
        );
    }
}
