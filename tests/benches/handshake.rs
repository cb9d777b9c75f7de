//! TLS handshake cost by key kind (run: `cargo bench -p vigo-tests --bench handshake`):
//! a full TLS 1.3 handshake with mutual authentication (server and client certificate,
//! the product's own configs), P-256 against the Ed25519 keys of earlier releases, in
//! the same sitting. Server and client each run on their own thread over loopback;
//! the CPU time of each thread is read from CLOCK_THREAD_CPUTIME_ID, so the figures are
//! per side, not wall time.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use vigo_common::pki::{
    CertAuthority, LEGACY_TLS_KEY_ALGORITHM, Role, SignatureAlgorithm, TLS_KEY_ALGORITHM,
};
use vigo_common::tls::{self, ClientAuth};

const HANDSHAKES: usize = 2_000;

fn thread_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Runs `n` handshakes; returns (server CPU, client CPU, wall) per handshake.
fn measure(algorithm: &'static SignatureAlgorithm, n: usize) -> (Duration, Duration, Duration) {
    let (ca, _) = CertAuthority::create_with("bench CA", algorithm).unwrap();
    let names = ["localhost".to_string()];
    let server = ca.issue_node(Role::Spoke, "bench", &names).unwrap();
    let client = ca.issue_node(Role::Hub, "1", &names).unwrap();
    let server_config = Arc::new(
        tls::server_config(
            ca.cert_pem(),
            &server.cert_pem,
            &server.key_pem,
            ClientAuth::Required,
        )
        .unwrap(),
    );
    let client_config = Arc::new(
        tls::client_config(
            ca.cert_pem(),
            Some((&client.cert_pem, &client.key_pem)),
            &[Role::Spoke],
        )
        .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let serving = std::thread::spawn(move || {
        let started = thread_cpu();
        for _ in 0..n {
            let (mut tcp, _) = listener.accept().unwrap();
            let mut conn = rustls::ServerConnection::new(server_config.clone()).unwrap();
            while conn.is_handshaking() {
                conn.complete_io(&mut tcp).unwrap();
            }
            // One byte each way: the client's certificate was checked.
            let mut stream = rustls::Stream::new(&mut conn, &mut tcp);
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).unwrap();
            stream.write_all(&byte).unwrap();
        }
        thread_cpu() - started
    });
    let wall = Instant::now();
    let started = thread_cpu();
    for _ in 0..n {
        let mut tcp = TcpStream::connect(address).unwrap();
        tcp.set_nodelay(true).unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut conn = rustls::ClientConnection::new(client_config.clone(), name).unwrap();
        let mut stream = rustls::Stream::new(&mut conn, &mut tcp);
        stream.write_all(&[7]).unwrap();
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).unwrap();
    }
    let client_cpu = thread_cpu() - started;
    let wall = wall.elapsed();
    let server_cpu = serving.join().unwrap();
    let per = |d: Duration| d / n as u32;
    (per(server_cpu), per(client_cpu), per(wall))
}

fn main() {
    tls::install_default_provider();
    println!(
        "{HANDSHAKES} TLS 1.3 handshakes with client certificates per key kind, loopback, same sitting"
    );
    println!(
        "{:<10} {:>14} {:>14} {:>12}",
        "keys", "server CPU", "client CPU", "wall"
    );
    // Warm both up once (page faults, first allocations), then measure alternately.
    measure(TLS_KEY_ALGORITHM, 50);
    measure(LEGACY_TLS_KEY_ALGORITHM, 50);
    for round in 0..2 {
        for (name, algorithm) in [
            ("P-256", TLS_KEY_ALGORITHM),
            ("Ed25519", LEGACY_TLS_KEY_ALGORITHM),
        ] {
            let (server, client, wall) = measure(algorithm, HANDSHAKES);
            println!(
                "{:<10} {:>11.0} µs {:>11.0} µs {:>9.0} µs   (round {})",
                name,
                server.as_secs_f64() * 1e6,
                client.as_secs_f64() * 1e6,
                wall.as_secs_f64() * 1e6,
                round + 1
            );
        }
    }
}
