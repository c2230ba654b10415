//! Round trips of every message and arbitrary bytes through the decoders.

use omniroute_protocol::*;
use proptest::prelude::*;

fn key() -> OrderKey {
    OrderKey {
        channel: "web".into(),
        client_order_id: "o-1".into(),
    }
}

fn round_trip_request(request: Request) {
    let mut bytes = Vec::new();
    request.encode(42, &mut bytes);
    let length = check_frame(&bytes).unwrap().unwrap();
    assert_eq!(length, bytes.len());
    let (kind, id, payload) = split_frame(&bytes);
    assert_eq!(id, 42);
    assert_eq!(Request::decode(kind, payload).unwrap().unwrap(), request);
}

fn round_trip_response(response: Response) {
    let mut bytes = Vec::new();
    response.encode(7, &mut bytes);
    let (kind, id, payload) = split_frame(&bytes[..check_frame(&bytes).unwrap().unwrap()]);
    assert_eq!(id, 7);
    assert_eq!(Response::decode(kind, payload).unwrap().unwrap(), response);
}

#[test]
fn every_request_round_trips() {
    // Proves encode and decode agree on every request layout.
    let order = Order {
        channel: "web".into(),
        client_order_id: "o-1".into(),
        lat: 52.5,
        lon: 13.4,
        market: Some("DE".into()),
        method: Method::Pickup {
            store: "ST-1".into(),
        },
        hold_ttl_ms: Some(60_000),
        lines: vec![("SKU-1".into(), 2), ("SKU-2".into(), 1)],
    };
    for request in [
        Request::Hello {
            version: 1,
            token: "t".into(),
        },
        Request::Submit(order),
        Request::Confirm(key()),
        Request::Cancel(key()),
        Request::GetOrder(key()),
        Request::Availability {
            sku: "SKU-1".into(),
            near: None,
            with_state: false,
        },
        Request::Availability {
            sku: "SKU-1".into(),
            near: Some(Near {
                lat: 1.0,
                lon: 2.0,
                count: 3,
                min_qty: 4,
            }),
            with_state: false,
        },
        Request::Availability {
            sku: "SKU-1".into(),
            near: None,
            with_state: true,
        },
        Request::Availability {
            sku: "SKU-1".into(),
            near: Some(Near {
                lat: 1.0,
                lon: 2.0,
                count: 3,
                min_qty: 4,
            }),
            with_state: true,
        },
        Request::StockSet(vec![
            StockSet {
                sku: "A".into(),
                node: "N".into(),
                on_hand: 5,
                safety_stock: None,
            },
            StockSet {
                sku: "B".into(),
                node: "N".into(),
                on_hand: 6,
                safety_stock: Some(1),
            },
        ]),
        Request::StockAdjust(vec![StockAdjust {
            sku: "A".into(),
            node: "N".into(),
            delta: -3,
        }]),
        Request::StockSetKnown(vec![StockSet {
            sku: "A".into(),
            node: "N".into(),
            on_hand: 7,
            safety_stock: Some(2),
        }]),
        Request::StockAdjustKnown(vec![StockAdjust {
            sku: "B".into(),
            node: "N".into(),
            delta: 4,
        }]),
        Request::NodeReject {
            node: "N".into(),
            order: key(),
            counts: vec![("A".into(), 0)],
        },
        Request::NodeShip {
            node: "N".into(),
            order: key(),
            sku: "A".into(),
            qty: 1,
        },
        Request::Return {
            node: "N".into(),
            order: key(),
            sku: "A".into(),
            qty: 1,
        },
        Request::Subscribe {
            node: "N".into(),
            from_cursor: 9,
        },
        Request::SetNodeOnline {
            node: "N".into(),
            online: false,
        },
        Request::FollowOrders {
            channel: "web".into(),
            from_cursor: 12,
        },
        Request::ListOrders(OrderQuery {
            channel: "web".into(),
            state: order_states::CONFIRMED,
            node: "N".into(),
            created_from_ms: 1_000,
            created_to_ms: 2_000,
            after: 99,
            limit: 50,
        }),
    ] {
        round_trip_request(request);
    }
}

#[test]
fn every_response_round_trips() {
    // Proves encode and decode agree on every response layout.
    let short = vec![Short {
        line: 1,
        sku: "B".into(),
        requested: 3,
        available: 1,
    }];
    let view = OrderView {
        order_id: 5,
        channel: "web".into(),
        client_order_id: "o".into(),
        state: order_states::HELD,
        expires_at_ms: 9,
        allocations: vec![AllocationView {
            line: 0,
            sku: "A".into(),
            node: "N".into(),
            open: 1,
            shipped: 1,
            returned: 0,
        }],
        short: short.clone(),
    };
    for response in [
        Response::HelloOk {
            role: "admin".into(),
        },
        Response::Decision(Decision::Routed {
            order_id: 5,
            expires_at_ms: 6,
            allocations: vec![Allocation {
                line: 0,
                sku: "A".into(),
                node: "N".into(),
                qty: 2,
            }],
            short: short.clone(),
        }),
        Response::Decision(Decision::Rejected {
            code: reject_codes::SHORT,
            detail: 0,
            message: "short".into(),
            short: short.clone(),
        }),
        Response::Order(view.clone()),
        Response::OrderStatus(OrderStatus {
            cursor: 4,
            change: order_changes::REROUTED_NODE_OFFLINE,
            released_from: vec!["M".into()],
            order: view.clone(),
        }),
        Response::OrderPage {
            orders: vec![
                ListedOrder {
                    order: view.clone(),
                    created_at_ms: 1_796_479_416_000,
                },
                ListedOrder {
                    order: view,
                    created_at_ms: 0,
                },
            ],
            next_after: 5,
        },
        Response::Availability(vec![
            NodeStock {
                node: "N".into(),
                atp: 3,
                distance_km: Some(1.5),
            },
            NodeStock {
                node: "M".into(),
                atp: 1,
                distance_km: None,
            },
        ]),
        Response::NodeAvailability(vec![
            NodeState {
                node: "N".into(),
                atp: 3,
                distance_km: Some(1.5),
                online: false,
                priority: 2,
            },
            NodeState {
                node: "M".into(),
                atp: 1,
                distance_km: None,
                online: true,
                priority: 1,
            },
        ]),
        Response::StockResult {
            applied: 1,
            bumped_units: 2,
            errors: 0,
        },
        Response::NodeOnline { rerouted: 4 },
        Response::Subscribed { next_cursor: 11 },
        Response::Event(Event {
            cursor: 3,
            kind: event_kinds::ALLOCATED,
            order_id: 8,
            channel: "web".into(),
            client_order_id: "o".into(),
            lines: vec![(0, "A".into(), 2)],
        }),
        Response::error(ErrorCode::Forbidden, "no"),
    ] {
        round_trip_response(response);
    }
}

#[test]
fn framing_limits_are_checked_before_allocation() {
    // Proves oversized and undersized length prefixes are refused from the first 4 bytes,
    // and that a partial frame asks for more.
    let oversized = ((MAX_FRAME_BYTES + 1) as u32).to_le_bytes();
    assert_eq!(
        check_frame(&oversized),
        Err(FrameError::TooLarge(MAX_FRAME_BYTES + 1))
    );
    assert_eq!(
        check_frame(&3u32.to_le_bytes()),
        Err(FrameError::TooShort(3))
    );
    assert_eq!(check_frame(&[1, 0]), Ok(None));
    let mut bytes = Vec::new();
    Request::Confirm(key()).encode(1, &mut bytes);
    assert_eq!(check_frame(&bytes[..bytes.len() - 1]), Ok(None));
}

#[test]
fn malformed_payloads_name_the_problem() {
    // Proves bad UTF-8, over-long strings, over-limit counts and trailing bytes are errors.
    let bad_utf8 = [3u8, 0, 0xff, 0xfe, 0xfd, 0, 0];
    assert!(Request::decode(kinds::CONFIRM, &bad_utf8)
        .unwrap_err()
        .to_string()
        .contains("UTF-8"));
    let mut too_many_lines = Vec::new();
    for part in [
        &b"\x03\x00web"[..],
        b"\x01\x00o",
        &52.0f64.to_le_bytes(),
        &13.0f64.to_le_bytes(),
        b"\x00\x00",
        b"\x00",
        &0u32.to_le_bytes(),
        &65u16.to_le_bytes(),
    ] {
        too_many_lines.extend_from_slice(part);
    }
    assert!(Request::decode(kinds::SUBMIT, &too_many_lines)
        .unwrap_err()
        .to_string()
        .contains("65 lines"));
    let mut bytes = Vec::new();
    Request::Confirm(key()).encode(1, &mut bytes);
    let (kind, _, payload) = split_frame(&bytes);
    let mut trailing = payload.to_vec();
    trailing.push(0);
    assert!(Request::decode(kind, &trailing)
        .unwrap_err()
        .to_string()
        .contains("trailing"));
    assert_eq!(Request::decode(0x7E, &[]), Ok(None));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..512), kind in any::<u8>()) {
        // Proves the frame check and both decoders turn any bytes into a value or an error.
        let _ = check_frame(&bytes);
        let _ = Request::decode(kind, &bytes);
        let _ = Response::decode(kind, &bytes);
    }

    #[test]
    fn corrupted_frames_never_panic(seed in any::<u64>(), flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)) {
        // Proves a valid frame with bytes overwritten decodes or errs, never panics.
        let mut bytes = Vec::new();
        let order = Order {
            channel: "web".into(),
            client_order_id: format!("o-{seed}"),
            lat: 1.0,
            lon: 2.0,
            market: None,
            method: Method::Ship,
            hold_ttl_ms: None,
            lines: vec![("A".into(), 1)],
        };
        Request::Submit(order).encode(seed, &mut bytes);
        for (index, value) in flips {
            let i = index.index(bytes.len());
            bytes[i] = value;
        }
        if let Ok(Some(length)) = check_frame(&bytes) {
            let (kind, _, payload) = split_frame(&bytes[..length]);
            let _ = Request::decode(kind, payload);
        }
    }
}
