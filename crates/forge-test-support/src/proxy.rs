//! A TCP proxy for fault tests: put it between a node and PostgreSQL, then cut its connections
//! (RST), blackhole them (half-open: no bytes, no RST), slow them down, refuse new ones, and heal.
//!
//! Written on tokio rather than taken from a crate: the faults needed here (a reset with
//! `SO_LINGER 0`, a half-open connection that resumes on heal, acting on one connection picked
//! by its upstream port, as `pg_stat_activity.client_port` shows it) are a few lines each on
//! tokio, while the maintained fault proxies (toxiproxy) are separate servers driven over HTTP.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does now; every connection watches it.
#[derive(Debug, Default, Clone)]
struct Faults {
    /// Every connection holds its bytes.
    blackhole_all: bool,
    /// These connections hold their bytes.
    blackholed: HashSet<u64>,
    /// Bumped by [`Proxy::cut`]: connections accepted before it are reset.
    cut_generation: u64,
    /// These connections are reset.
    cut: HashSet<u64>,
    /// New connections are reset as soon as they are accepted.
    refuse: bool,
    /// Added before each chunk is passed on, in both directions.
    latency: Duration,
}

/// One proxied connection, as [`Proxy::connections`] lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection {
    pub id: u64,
    /// The proxy's end of its connection to the upstream server: for PostgreSQL, the
    /// `client_port` of the session in `pg_stat_activity`.
    pub upstream_local: SocketAddr,
}

/// A running proxy; it stops (resetting its connections) when dropped.
pub struct Proxy {
    addr: SocketAddr,
    faults: watch::Sender<Faults>,
    conns: Arc<Mutex<BTreeMap<u64, Connection>>>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.faults.send_modify(|f| f.cut_generation += 1);
    }
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1 and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (faults, _) = watch::channel(Faults::default());
        let conns = Arc::new(Mutex::new(BTreeMap::new()));
        let acceptor = tokio::spawn(accept(listener, upstream, faults.clone(), conns.clone()));
        Ok(Proxy {
            addr,
            faults,
            conns,
            acceptor,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The connections open now.
    pub fn connections(&self) -> Vec<Connection> {
        self.conns.lock().unwrap().values().copied().collect()
    }

    /// Resets every open connection (both ends see an RST). New connections go through.
    pub fn cut(&self) {
        self.faults.send_modify(|f| f.cut_generation += 1);
    }

    /// Resets one connection.
    pub fn cut_connection(&self, id: u64) {
        self.faults.send_modify(|f| {
            f.cut.insert(id);
        });
    }

    /// Stops passing bytes on every connection, open or new, while keeping them open: what a
    /// network partition looks like to both ends (a new connection is accepted, but nothing
    /// ever answers on it, so to the application it hangs like an unanswered SYN).
    pub fn blackhole(&self) {
        self.faults.send_modify(|f| f.blackhole_all = true);
    }

    /// Stops passing bytes on one connection (half-open), the others keep going.
    pub fn blackhole_connection(&self, id: u64) {
        self.faults.send_modify(|f| {
            f.blackholed.insert(id);
        });
    }

    /// Resets open connections and every new one until [`heal`](Self::heal): a server that
    /// is down.
    pub fn refuse(&self) {
        self.faults.send_modify(|f| {
            f.refuse = true;
            f.cut_generation += 1;
        });
    }

    /// Delays each chunk by `latency` in each direction.
    pub fn set_latency(&self, latency: Duration) {
        self.faults.send_modify(|f| f.latency = latency);
    }

    /// Ends every fault: held bytes flow again (a healed partition), new connections are
    /// accepted, no latency. Connections already reset stay gone.
    pub fn heal(&self) {
        self.faults.send_modify(|f| {
            f.blackhole_all = false;
            f.blackholed.clear();
            f.refuse = false;
            f.latency = Duration::ZERO;
        });
    }
}

async fn accept(
    listener: TcpListener,
    upstream: SocketAddr,
    faults: watch::Sender<Faults>,
    conns: Arc<Mutex<BTreeMap<u64, Connection>>>,
) {
    let mut next_id = 0u64;
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let rx = faults.subscribe();
        if rx.borrow().refuse {
            reset(client);
            continue;
        }
        next_id += 1;
        let id = next_id;
        let conns = conns.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                reset(client);
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            if let Ok(upstream_local) = server.local_addr() {
                conns
                    .lock()
                    .unwrap()
                    .insert(id, Connection { id, upstream_local });
            }
            relay(id, client, server, rx).await;
            conns.lock().unwrap().remove(&id);
        });
    }
}

/// Passes bytes both ways until either side closes (then closes both) or the connection is
/// cut (then resets both).
async fn relay(id: u64, mut client: TcpStream, mut server: TcpStream, rx: watch::Receiver<Faults>) {
    let generation = rx.borrow().cut_generation;
    let mut cut_rx = rx.clone();
    let was_cut = {
        let (mut cr, mut cw) = client.split();
        let (mut sr, mut sw) = server.split();
        tokio::select! {
            () = pump(id, &mut cr, &mut sw, rx.clone()) => false,
            () = pump(id, &mut sr, &mut cw, rx.clone()) => false,
            _ = cut_rx.wait_for(|f| f.cut_generation != generation || f.cut.contains(&id)) => true,
        }
    };
    if was_cut {
        reset(client);
        reset(server);
    } else {
        let _ = client.shutdown().await;
        let _ = server.shutdown().await;
    }
}

/// Copies `from` to `to`, holding bytes while the connection is blackholed.
async fn pump(
    id: u64,
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    mut rx: watch::Receiver<Faults>,
) {
    let open = |f: &Faults| !f.blackhole_all && !f.blackholed.contains(&id);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // Not reading while blackholed lets the kernel buffers fill, as with a dead link.
        if rx.wait_for(open).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let latency = rx.borrow().latency;
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        // Bytes read just before a blackhole are held too, not slipped through.
        if rx.wait_for(open).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Closes with an RST instead of a FIN.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server; returns its address.
    async fn echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream, within: Duration) -> std::io::Result<Vec<u8>> {
        s.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        match tokio::time::timeout(within, s.read_exact(&mut buf)).await {
            Ok(r) => r.map(|_| buf.to_vec()),
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }

    const SOON: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn cut_resets_at_once_and_new_connections_pass() {
        let proxy = Proxy::start(echo().await).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut s, SOON).await.unwrap(), b"ping");
        proxy.cut();
        let err = round_trip(&mut s, SOON).await.unwrap_err();
        assert_ne!(
            err.kind(),
            std::io::ErrorKind::TimedOut,
            "the cut must be an error at once, not a hang"
        );
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut s, SOON).await.unwrap(), b"ping");
    }

    #[tokio::test]
    async fn blackhole_hangs_reads_and_heal_delivers_what_was_held() {
        let proxy = Proxy::start(echo().await).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut s, SOON).await.unwrap(), b"ping");
        proxy.blackhole();
        let err = round_trip(&mut s, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        proxy.heal();
        // The bytes held during the blackhole arrive, then the next round trip works.
        let mut buf = [0u8; 4];
        tokio::time::timeout(SOON, s.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"ping");
        assert_eq!(round_trip(&mut s, SOON).await.unwrap(), b"ping");
    }

    #[tokio::test]
    async fn one_connection_can_be_blackholed_or_cut_alone() {
        let proxy = Proxy::start(echo().await).await.unwrap();
        let mut a = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut a, SOON).await.unwrap(), b"ping");
        let mut b = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut b, SOON).await.unwrap(), b"ping");
        let conns = proxy.connections();
        assert_eq!(conns.len(), 2);
        proxy.blackhole_connection(conns[0].id);
        assert!(round_trip(&mut a, Duration::from_millis(300))
            .await
            .is_err());
        assert_eq!(round_trip(&mut b, SOON).await.unwrap(), b"ping");
        proxy.cut_connection(conns[1].id);
        let err = round_trip(&mut b, SOON).await.unwrap_err();
        assert_ne!(err.kind(), std::io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn refuse_resets_new_connections_until_heal_and_latency_delays() {
        let proxy = Proxy::start(echo().await).await.unwrap();
        proxy.refuse();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(round_trip(&mut s, SOON).await.is_err());
        proxy.heal();
        proxy.set_latency(Duration::from_millis(100));
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        let started = std::time::Instant::now();
        assert_eq!(round_trip(&mut s, SOON).await.unwrap(), b"ping");
        assert!(started.elapsed() >= Duration::from_millis(200));
    }
}
