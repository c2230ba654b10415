//! Bad bytes over a real QUIC connection: every case gets its documented
//! answer, a well-behaved client keeps being served, and no stock changes.

mod common;

use common::*;
use omniroute_client::protocol::{
    self as wire, check_frame, close_codes, invalid_codes, kinds, reject_codes, split_frame,
    ErrorCode, Request, Response,
};
use omniroute_client::quinn;
use omniroute_client::{order, Decision, Trust};

/// What came back on one stream: the decoded frames, and the reset code if
/// the server reset it.
struct Reply {
    frames: Vec<(u64, Response)>,
    reset: Option<u64>,
}

async fn exchange(connection: &quinn::Connection, bytes: &[u8], finish: bool) -> Reply {
    let (mut send, mut recv) = connection.open_bi().await.expect("stream opens");
    let _ = send.write_all(bytes).await;
    if finish {
        let _ = send.finish();
    }
    let mut buffer = Vec::new();
    let mut reset = None;
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match recv.read_chunk(1 << 16, true).await {
                Ok(Some(chunk)) => buffer.extend_from_slice(&chunk.bytes),
                Ok(None) => break,
                Err(quinn::ReadError::Reset(code)) => {
                    reset = Some(code.into_inner());
                    break;
                }
                Err(other) => panic!("stream failed: {other}"),
            }
        }
    });
    read.await.expect("the server answers within 10 s");
    let mut frames = Vec::new();
    let mut at = 0;
    while let Ok(Some(length)) = check_frame(&buffer[at..]) {
        let (kind, id, payload) = split_frame(&buffer[at..at + length]);
        frames.push((
            id,
            Response::decode(kind, payload)
                .expect("server frames decode")
                .expect("known kind"),
        ));
        at += length;
    }
    Reply { frames, reset }
}

fn frame(kind: u8, id: u64, payload: &[u8]) -> Vec<u8> {
    let mut bytes = ((payload.len() + 9) as u32).to_le_bytes().to_vec();
    bytes.push(kind);
    bytes.extend_from_slice(&id.to_le_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

fn encoded(request: &Request, id: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    request.encode(id, &mut bytes);
    bytes
}

fn hello(token: &str) -> Vec<u8> {
    encoded(
        &Request::Hello {
            version: wire::PROTOCOL_VERSION,
            token: token.into(),
        },
        0,
    )
}

fn error_code(reply: &Reply, id: u64) -> u16 {
    match reply.frames.iter().find(|(i, _)| *i == id) {
        Some((_, Response::Error { code, .. })) => *code,
        other => panic!("expected an error for request {id}, got {other:?}"),
    }
}

/// The message of the `Unframeable` answer with request id `id`.
fn unframeable(reply: &Reply, id: u64) -> String {
    match reply.frames.iter().find(|(i, _)| *i == id) {
        Some((_, Response::Error { code, message })) if *code == ErrorCode::Unframeable as u16 => {
            message.clone()
        }
        other => panic!("expected Unframeable for request {id}, got {other:?}"),
    }
}

fn rejection(reply: &Reply, id: u64) -> (u16, u16) {
    match reply.frames.iter().find(|(i, _)| *i == id) {
        Some((_, Response::Decision(Decision::Rejected { code, detail, .. }))) => (*code, *detail),
        other => panic!("expected a rejection for request {id}, got {other:?}"),
    }
}

/// A server with channels c and web and 1000 units of SKU-1 at ST-1, and a
/// raw QUIC connection to it (not yet authenticated).
async fn two_channels_and_a_raw_connection(
    dir: &TempDir,
) -> (
    omniroute::engine::Engine,
    omniroute::server::RunningServer,
    quinn::Endpoint,
    quinn::Connection,
) {
    let text = format!(
        "{}{}{}",
        channel("c", &["nearest"]),
        channel("web", &["nearest"]),
        stock(&[("SKU-1", "ST-1", 1000)])
    );
    let (engine, server) = quic_server(&text, dir).await;
    let trust = Trust::CaFile(server.cert_path.clone());
    let (endpoint, raw) = omniroute_client::connect_quic(server.addr, "localhost", &trust)
        .await
        .unwrap();
    (engine, server, endpoint, raw)
}

async fn good_client_is_served(good: &omniroute_client::Client, n: &mut u32) {
    *n += 1;
    let decision = good
        .submit(order(
            "c",
            &format!("good-{n}"),
            50.0,
            10.0,
            &[("SKU-1", 1)],
        ))
        .await
        .expect("good client answered");
    assert!(matches!(decision, Decision::Routed { .. }), "{decision:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bytes_get_their_documented_answers() {
    // Proves each kind of bad input gets the answer PROTOCOL.md documents, while another
    // connection keeps being served and no stock changes.
    let dir = TempDir::new("bad-input");
    let (engine, server, _endpoint, raw) = two_channels_and_a_raw_connection(&dir).await;
    let good = client(&server, CHANNEL_C_TOKEN).await;
    let mut served = 0;
    let trust = Trust::CaFile(server.cert_path.clone());
    let order_frame = |id: u64, lines: Vec<(String, u32)>| {
        let mut o = order("c", &format!("bad-{id}"), 50.0, 10.0, &[]);
        o.lines = lines;
        encoded(&Request::Submit(o), id)
    };

    // Garbage before hello: a framed request is refused, nothing runs.
    let reply = exchange(&raw, &order_frame(1, vec![("SKU-1".into(), 1)]), true).await;
    assert_eq!(error_code(&reply, 1), ErrorCode::NotAuthenticated as u16);
    good_client_is_served(&good, &mut served).await;

    // Unframeable garbage: a length prefix far above the limit or below it is answered
    // Unframeable (too few bytes for a request id) and the stream ends.
    for (garbage, close_code) in [
        (
            [0xff, 0xff, 0xff, 0x7f, 1, 2, 3],
            close_codes::FRAME_TOO_LARGE,
        ),
        ([3, 0, 0, 0, 0xAA, 0xBB, 0xCC], close_codes::FRAME_TOO_SHORT),
    ] {
        let reply = exchange(&raw, &garbage, false).await;
        let message = unframeable(&reply, wire::UNFRAMED_REQUEST_ID);
        assert!(message.contains(&format!("{close_code:#x}")), "{message}");
        assert_eq!((reply.reset, reply.frames.len()), (None, 1));
    }
    good_client_is_served(&good, &mut served).await;

    // Authenticate the raw connection; the rest are answered per request.
    let mut batch = hello(CHANNEL_C_TOKEN);
    batch.extend(frame(0x7E, 2, b"whatever"));
    batch.extend(frame(kinds::CONFIRM, 3, &[2, 0, 0xC3, 0x28, 1, 0, b'x']));
    batch.extend(order_frame(4, vec![("SKU-1".into(), 0)]));
    batch.extend(order_frame(5, vec![("SKU-1".into(), u32::MAX)]));
    batch.extend(order_frame(6, vec![("NO-SUCH-SKU".into(), 1)]));
    batch.extend(encoded(
        &Request::Submit(order("web", "other-channel", 50.0, 10.0, &[("SKU-1", 1)])),
        7,
    ));
    batch.extend(encoded(
        &Request::StockSet(vec![wire::StockSet {
            sku: "SKU-1".into(),
            node: "ST-1".into(),
            on_hand: 0,
            safety_stock: None,
        }]),
        8,
    ));
    let mut too_many = encoded(
        &Request::Submit(order("c", "too-many", 50.0, 10.0, &[("SKU-1", 1)])),
        9,
    );
    // Rewrite the line count of the last frame to 65 and append 64 more lines.
    let count_at = too_many.len() - (2 + 2 + 5 + 4);
    too_many[count_at..count_at + 2].copy_from_slice(&65u16.to_le_bytes());
    for _ in 0..64 {
        too_many.extend_from_slice(&[5, 0, b'S', b'K', b'U', b'-', b'1', 1, 0, 0, 0]);
    }
    let length = (too_many.len() - 4) as u32;
    too_many[..4].copy_from_slice(&length.to_le_bytes());
    batch.extend(too_many);
    let reply = exchange(&raw, &batch, true).await;
    assert!(matches!(
        reply.frames.iter().find(|(i, _)| *i == 0),
        Some((_, Response::HelloOk { .. }))
    ));
    assert_eq!(error_code(&reply, 2), ErrorCode::UnknownKind as u16);
    assert_eq!(error_code(&reply, 3), ErrorCode::Malformed as u16);
    assert_eq!(
        rejection(&reply, 4),
        (reject_codes::INVALID, invalid_codes::BAD_QUANTITY)
    );
    assert_eq!(
        rejection(&reply, 5),
        (reject_codes::INVALID, invalid_codes::BAD_QUANTITY)
    );
    assert_eq!(
        rejection(&reply, 6),
        (reject_codes::INVALID, invalid_codes::UNKNOWN_SKU)
    );
    assert_eq!(error_code(&reply, 7), ErrorCode::Forbidden as u16);
    assert_eq!(error_code(&reply, 8), ErrorCode::Forbidden as u16);
    assert_eq!(error_code(&reply, 9), ErrorCode::Malformed as u16);
    assert_eq!(reply.reset, None);
    good_client_is_served(&good, &mut served).await;

    // A frame cut short by the end of the stream, after whole ones: every whole frame is
    // answered (the Submit holds stock, so its Decision must arrive), then the cut one.
    for attempt in 0..10u64 {
        let id = 100 + 2 * attempt;
        let mut bytes = order_frame(id, vec![("SKU-1".into(), 1)]);
        let cut = order_frame(id + 1, vec![("SKU-1".into(), 1)]);
        bytes.extend_from_slice(&cut[..cut.len() - 3]);
        let reply = exchange(&raw, &bytes, true).await;
        assert!(matches!(
            reply.frames.iter().find(|(i, _)| *i == id),
            Some((_, Response::Decision(Decision::Routed { .. })))
        ));
        served += 1;
        let message = unframeable(&reply, id + 1);
        assert!(
            message.contains(&format!("{:#x}", close_codes::TRUNCATED)),
            "{message}"
        );
        assert_eq!(reply.reset, None);
    }
    // Cut inside the header: no request id to name.
    let reply = exchange(&raw, &[40, 0, 0, 0, kinds::CONFIRM, 1], true).await;
    unframeable(&reply, wire::UNFRAMED_REQUEST_ID);
    good_client_is_served(&good, &mut served).await;

    // An unknown protocol version closes that connection with its code.
    let (_endpoint2, other) = omniroute_client::connect_quic(server.addr, "localhost", &trust)
        .await
        .unwrap();
    let (mut send, _recv) = other.open_bi().await.unwrap();
    send.write_all(&encoded(
        &Request::Hello {
            version: 99,
            token: CHANNEL_C_TOKEN.into(),
        },
        1,
    ))
    .await
    .unwrap();
    let closed = tokio::time::timeout(std::time::Duration::from_secs(10), other.closed())
        .await
        .expect("closed in time");
    match closed {
        quinn::ConnectionError::ApplicationClosed(close) => assert_eq!(
            close.error_code.into_inner(),
            u64::from(close_codes::VERSION_MISMATCH)
        ),
        other => panic!("unexpected close {other:?}"),
    }
    good_client_is_served(&good, &mut served).await;

    // Nothing but the good client's orders touched the stock.
    let cell = engine.cell("SKU-1", "ST-1").await.unwrap();
    assert_eq!((cell.on_hand, cell.reserved), (1000, served));
    engine.check_invariants().await.unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answers_each_order_alone_and_refuses_an_oversized_frame() {
    // Proves a SubmitBatch's bad entries (undecodable bytes, a bad quantity, another
    // channel's order) are each answered alone while the good ones around them are routed;
    // a batch over MAX_ORDERS_PER_SUBMIT_BATCH is refused TOO_LARGE naming the limit, and a
    // batch whose count runs past its bytes is MALFORMED; nothing else changes the stock.
    let dir = TempDir::new("bad-batch");
    let (engine, server, _endpoint, raw) = two_channels_and_a_raw_connection(&dir).await;
    let good = |id: &str| Ok(order("c", id, 50.0, 10.0, &[("SKU-1", 1)]));
    let entries = vec![
        good("batch-a"),
        Err(wire::DecodeError::Truncated("test")),
        Ok(order("c", "batch-zero", 50.0, 10.0, &[("SKU-1", 0)])),
        Ok(order("web", "batch-web", 50.0, 10.0, &[("SKU-1", 1)])),
        good("batch-b"),
    ];
    let mut bytes = hello(CHANNEL_C_TOKEN);
    bytes.extend(encoded(&Request::SubmitBatch(entries), 10));
    // 1025 entries: refused whole before any is read.
    let mut oversized = Vec::new();
    oversized.extend_from_slice(&1025u16.to_le_bytes());
    bytes.extend(frame(kinds::SUBMIT_BATCH, 11, &oversized));
    // A count of 3 with one entry: the frame is malformed.
    let mut short = encoded(&Request::SubmitBatch(vec![good("batch-c")]), 12);
    short[13..15].copy_from_slice(&3u16.to_le_bytes());
    bytes.extend(short);
    let reply = exchange(&raw, &bytes, true).await;
    let Some((_, Response::Decisions(answers))) = reply.frames.iter().find(|(i, _)| *i == 10)
    else {
        panic!("no Decisions for the batch: {:?}", reply.frames);
    };
    assert_eq!(answers.len(), 5);
    assert!(matches!(
        &answers[0],
        wire::Judged::Decision(Decision::Routed { .. })
    ));
    assert!(
        matches!(&answers[1], wire::Judged::Error { code, message }
            if *code == ErrorCode::Malformed as u16 && message.contains("order 1 of the batch")),
        "{:?}",
        answers[1]
    );
    assert!(
        matches!(&answers[2], wire::Judged::Decision(Decision::Rejected { code, detail, .. })
        if (*code, *detail) == (reject_codes::INVALID, invalid_codes::BAD_QUANTITY))
    );
    assert!(
        matches!(&answers[3], wire::Judged::Error { code, .. } if *code == ErrorCode::Forbidden as u16)
    );
    assert!(matches!(
        &answers[4],
        wire::Judged::Decision(Decision::Routed { .. })
    ));
    assert_eq!(error_code(&reply, 11), ErrorCode::TooLarge as u16);
    match reply.frames.iter().find(|(i, _)| *i == 11) {
        Some((_, Response::Error { message, .. })) => {
            assert!(message.contains("1024"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(error_code(&reply, 12), ErrorCode::Malformed as u16);
    let cell = engine.cell("SKU-1", "ST-1").await.unwrap();
    assert_eq!((cell.on_hand, cell.reserved), (1000, 2));
    engine.check_invariants().await.unwrap();
    server.shutdown().await;
}
