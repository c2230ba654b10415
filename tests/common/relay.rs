//! A UDP relay the test controls, between one replica's QUIC endpoint and
//! a peer's: it forwards datagrams both ways until it is cut, then drops
//! them all (a partition), until it is healed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::UdpSocket;

/// A UDP datagram's largest size.
const DATAGRAM_BYTES: usize = 65_536;

pub struct Relay {
    /// Where the dialing replica sends (the peer's address in its config).
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// A relay to `target` on a free loopback port (a std socket, so that
    /// it can be made before the runtime runs the relay).
    pub fn start(target: SocketAddr) -> Relay {
        let front = std::net::UdpSocket::bind("127.0.0.1:0").expect("a relay port");
        front.set_nonblocking(true).unwrap();
        let addr = front.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(relay(front, target, cut.clone()));
        Relay { addr, cut, task }
    }

    /// Drops every datagram from now on, both ways.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(front: std::net::UdpSocket, target: SocketAddr, cut: Arc<AtomicBool>) {
    let front = UdpSocket::from_std(front).expect("a tokio socket");
    let back = UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("a relay socket");
    back.connect(target).await.expect("connect");
    // The dialer's endpoint: the one address the relay answers to.
    let mut dialer: Option<SocketAddr> = None;
    let (mut inward, mut outward) = (vec![0; DATAGRAM_BYTES], vec![0; DATAGRAM_BYTES]);
    loop {
        tokio::select! {
            got = front.recv_from(&mut inward) => {
                let Ok((n, from)) = got else { continue };
                dialer = Some(from);
                if !cut.load(Ordering::SeqCst) {
                    let _ = back.send(&inward[..n]).await;
                }
            }
            got = back.recv(&mut outward) => {
                let Ok(n) = got else { continue };
                if let (Some(to), false) = (dialer, cut.load(Ordering::SeqCst)) {
                    let _ = front.send_to(&outward[..n], to).await;
                }
            }
        }
    }
}
