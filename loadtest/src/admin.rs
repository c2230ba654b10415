//! The admin connection: the stock set before the run, the feed and node
//! events beside it, the audit after. To one daemon a plain [`Client`]; to
//! a cluster a [`ClusterClient`], whose calls go to the leader.

use omniroute_client::{
    Client, ClientError, ClusterClient, Near, NodeStock, OrderView, StockAdjust, StockSet,
};

pub(crate) enum Admin {
    Single(Client),
    Cluster(ClusterClient),
}

impl Admin {
    pub(crate) async fn availability(
        &self,
        sku: &str,
        near: Option<Near>,
    ) -> Result<Vec<NodeStock>, ClientError> {
        match self {
            Admin::Single(client) => client.availability(sku, near).await,
            Admin::Cluster(cluster) => {
                cluster
                    .with_leader(true, |client| {
                        let near = near.clone();
                        async move { client.availability(sku, near).await }
                    })
                    .await
            }
        }
    }

    pub(crate) async fn get_order_by_id(
        &self,
        channel: &str,
        order_id: u64,
    ) -> Result<OrderView, ClientError> {
        match self {
            Admin::Single(client) => client.get_order_by_id(channel, order_id).await,
            Admin::Cluster(cluster) => cluster.get_order_by_id(channel, order_id).await,
        }
    }

    /// (applied, bumped units, errors); absolute levels, safe to resend.
    pub(crate) async fn stock_set(
        &self,
        entries: Vec<StockSet>,
    ) -> Result<(u32, u32, u32), ClientError> {
        match self {
            Admin::Single(client) => client.stock_set(entries).await,
            Admin::Cluster(cluster) => {
                cluster
                    .with_leader(true, |client| {
                        let entries = entries.clone();
                        async move { client.stock_set(entries).await }
                    })
                    .await
            }
        }
    }

    /// (applied, bumped units, errors); a delta, so not resent after a lost
    /// connection (the error is returned: the feed counts it).
    pub(crate) async fn stock_adjust(
        &self,
        entries: Vec<StockAdjust>,
    ) -> Result<(u32, u32, u32), ClientError> {
        match self {
            Admin::Single(client) => client.stock_adjust(entries).await,
            Admin::Cluster(cluster) => {
                cluster
                    .with_leader(false, |client| {
                        let entries = entries.clone();
                        async move { client.stock_adjust(entries).await }
                    })
                    .await
            }
        }
    }

    pub(crate) async fn set_node_online(
        &self,
        node: &str,
        online: bool,
    ) -> Result<u32, ClientError> {
        match self {
            Admin::Single(client) => client.set_node_online(node, online).await,
            Admin::Cluster(cluster) => {
                cluster
                    .with_leader(true, |client| async move {
                        client.set_node_online(node, online).await
                    })
                    .await
            }
        }
    }

    pub(crate) async fn close(self) {
        match self {
            Admin::Single(client) => client.close().await,
            Admin::Cluster(cluster) => cluster.close().await,
        }
    }
}
