//! Stock counts off the wire over the real binary: a count or an
//! adjustment no cell may take is refused and changes nothing.

mod common;

use common::daemon::Daemon;
use common::TempDir;
use omniroute::limits::MAX_ON_HAND_UNITS;
use omniroute_client::{Client, ClientError};
use omniroute_protocol::{ErrorCode, StockAdjust, StockSet};

const ADMIN: &str = "dev-admin-token";
const SKU: &str = "SKU-1";
const NODE: &str = "WH-DE-HAM";

fn set(on_hand: u32, safety_stock: Option<u32>) -> StockSet {
    StockSet {
        sku: SKU.into(),
        node: NODE.into(),
        on_hand,
        safety_stock,
    }
}

fn adjust(delta: i64) -> StockAdjust {
    StockAdjust {
        sku: SKU.into(),
        node: NODE.into(),
        delta,
    }
}

/// The SKU's available units at every node, as the daemon answers them.
async fn atp(client: &Client) -> Vec<(String, u32)> {
    let mut rows: Vec<_> = client
        .availability(SKU, None)
        .await
        .unwrap()
        .into_iter()
        .map(|row| (row.node, row.atp))
        .collect();
    rows.sort();
    rows
}

fn refused_as_invalid_quantity(answer: Result<(u32, u32, u32), ClientError>) -> String {
    match answer {
        Err(ClientError::Server { code, message }) => {
            assert_eq!(code, ErrorCode::InvalidQuantity as u16, "{message}");
            message
        }
        other => panic!("expected INVALID_QUANTITY, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_no_cell_may_take_are_refused_and_change_nothing() {
    // Proves an adjust of +i64::MAX, a StockSet with on_hand 0xFFFFFFFF or above the limit,
    // and an adjust past the limit from the current count are refused with stock unchanged,
    // while the counts at the limit are applied.
    let dir = TempDir::new("stock-counts");
    let mut daemon = Daemon::start(&dir.0, None, "off").await;
    let client = daemon.client(ADMIN).await;
    assert_eq!(
        client.stock_set(vec![set(5, Some(0))]).await.unwrap(),
        (1, 0, 0)
    );
    let before = atp(&client).await;
    assert!(before.contains(&(NODE.to_string(), 5)), "{before:?}");

    let message = refused_as_invalid_quantity(client.stock_adjust(vec![adjust(i64::MAX)]).await);
    assert!(message.contains(NODE), "names the entry: {message}");
    refused_as_invalid_quantity(client.stock_adjust(vec![adjust(i64::MIN)]).await);
    let message = refused_as_invalid_quantity(client.stock_set(vec![set(u32::MAX, None)]).await);
    assert!(
        message.contains("safety_stock"),
        "says what the sentinel is for: {message}"
    );
    refused_as_invalid_quantity(
        client
            .stock_set(vec![set(MAX_ON_HAND_UNITS + 1, None)])
            .await,
    );
    refused_as_invalid_quantity(
        client
            .stock_set(vec![set(1, Some(MAX_ON_HAND_UNITS + 1))])
            .await,
    );
    // One bad entry refuses the whole feed: the good one before it is not applied.
    refused_as_invalid_quantity(
        client
            .stock_set(vec![set(7, None), set(u32::MAX, None)])
            .await,
    );
    assert_eq!(atp(&client).await, before);

    // Within the per-entry bound but past the limit from 5 on hand: that entry's error.
    let delta = i64::from(MAX_ON_HAND_UNITS);
    assert_eq!(
        client.stock_adjust(vec![adjust(delta)]).await.unwrap(),
        (0, 0, 1)
    );
    assert_eq!(atp(&client).await, before);

    // The limit itself is a count like any other; the sentinel leaves safety stock alone.
    assert_eq!(
        client
            .stock_set(vec![set(MAX_ON_HAND_UNITS, None)])
            .await
            .unwrap(),
        (1, 0, 0)
    );
    assert!(atp(&client)
        .await
        .contains(&(NODE.to_string(), MAX_ON_HAND_UNITS)));
    assert_eq!(
        client.stock_adjust(vec![adjust(-delta)]).await.unwrap(),
        (1, 0, 0)
    );
    assert!(atp(&client).await.iter().all(|(node, _)| node != NODE));
    client.close().await;
    daemon.child.kill().await.unwrap();
}
