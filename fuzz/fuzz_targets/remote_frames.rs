//! The remote protocol's decoders (`store::backend::remote::proto`): hellos, requests, responses
//! and response bodies, on any bytes a peer could send after the handshake. No panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use store::backend::remote::proto;

fuzz_target!(|data: &[u8]| {
    let _ = proto::ClientHello::decode(data);
    let _ = proto::ServerHello::decode(data);
    let _ = proto::Request::decode(data);
    let _ = proto::decode_response(data);
    let _ = proto::decode_list(data);
    let _ = proto::decode_blob(data);
    let _ = proto::decode_append(data);
});
