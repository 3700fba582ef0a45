//! Behaviour of the programmable upstream, the client and the load generators (no Envoy).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use reflex_harness::client::Error;
use reflex_harness::{
    closed_loop, open_loop, Behaviour, Client, ClosedLoop, OpenLoop, RemoteUpstream, RequestSpec,
    Upstream, UpstreamOptions, UpstreamStats,
};

fn start(name: &str, b: Behaviour) -> Upstream {
    Upstream::start(name, b).expect("start upstream")
}

/// Polls `f` until true (server-side counters lag the client by a few microseconds).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn status_mix_follows_weights_and_is_reproducible() {
    let mix = Behaviour::default().with_status_mix(&[(200, 80), (503, 15), (429, 5)]);
    let run = || {
        let opts = UpstreamOptions {
            behaviour: mix.clone(),
            seed: Some(42),
            ..UpstreamOptions::new("u0")
        };
        let u = Upstream::start_with(opts).unwrap();
        let mut c = Client::new(u.addr());
        let statuses: Vec<u16> = (0..400).map(|_| c.get("/", &[]).unwrap().status).collect();
        (statuses, u.stats())
    };
    let (a, stats) = run();
    let (b, _) = run();
    assert_eq!(a, b, "same seed, same sequence");
    let share = |s: u16| a.iter().filter(|&&x| x == s).count() as f64 / a.len() as f64;
    assert!(
        (0.72..0.88).contains(&share(200)),
        "200 share {}",
        share(200)
    );
    assert!(
        (0.09..0.21).contains(&share(503)),
        "503 share {}",
        share(503)
    );
    assert!(
        (0.01..0.10).contains(&share(429)),
        "429 share {}",
        share(429)
    );
    assert_eq!(stats.requests, 400);
    assert_eq!(stats.answered(), 400);
    assert_eq!(stats.status(503) as f64, share(503) * 400.0);
    assert_eq!(stats.connections, 1, "one keep-alive connection");
    assert_eq!(stats.in_flight, 0);
}

#[test]
fn responses_carry_id_body_and_retry_after() {
    let u = start("u7", Behaviour::status(503).with_retry_after(3));
    let r = Client::new(u.addr()).get("/x", &[]).unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.header("X-Upstream-Id"), Some("u7"));
    assert_eq!(r.upstream_id(), Some("u7"));
    assert_eq!(r.header("retry-after"), Some("3"));
    assert_eq!(r.text().trim(), "u7");
    u.set_behaviour(Behaviour::ok().with_retry_after(3));
    let r = Client::new(u.addr()).get("/x", &[]).unwrap();
    assert_eq!(
        (r.status, r.header("retry-after")),
        (200, None),
        "only on 429/503"
    );
    // Per-request overrides.
    let r = Client::new(u.addr())
        .get("/", &[("x-upstream-status", "418")])
        .unwrap();
    assert_eq!(r.status, 418);
}

#[test]
fn latency_is_applied() {
    let u = start("slow", Behaviour::ok().with_latency_ms(60, 20));
    let mut c = Client::new(u.addr());
    for _ in 0..3 {
        let t = Instant::now();
        assert_eq!(c.get("/", &[]).unwrap().status, 200);
        let ms = t.elapsed().as_millis();
        assert!((60..300).contains(&ms), "latency {ms} ms");
    }
    let t = Instant::now();
    c.get("/", &[("x-upstream-delay-ms", "0")]).unwrap();
    assert!(t.elapsed() < Duration::from_millis(50), "delay override");
    // Slow tail: every request slow.
    let mut b = Behaviour::ok();
    b.latency.slow_fraction = 1.0;
    b.latency.slow_ms = 100;
    u.set_behaviour(b);
    let t = Instant::now();
    c.get("/", &[]).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(100));
}

#[test]
fn capacity_queues_then_rejects_with_503() {
    let u = start(
        "cap",
        Behaviour::ok().with_latency_ms(300, 0).with_capacity(1, 1),
    );
    let addr = u.addr();
    let t = Instant::now();
    let handles: Vec<_> = (0..4)
        .map(|i| {
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(20 * i)); // deterministic arrival order
                let t = Instant::now();
                let s = Client::new(addr).get("/", &[]).unwrap().status;
                (s, t.elapsed())
            })
        })
        .collect();
    let results: Vec<(u16, Duration)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let statuses: Vec<u16> = results.iter().map(|r| r.0).collect();
    assert_eq!(statuses, vec![200, 200, 503, 503], "{results:?}");
    assert!(
        results[2].1 < Duration::from_millis(150),
        "rejections are immediate"
    );
    assert!(
        results[1].1 >= Duration::from_millis(450),
        "second one queued behind the first"
    );
    assert!(t.elapsed() < Duration::from_secs(2));
    let s = u.stats();
    assert_eq!((s.rejected, s.status(503), s.status(200)), (2, 2, 2));
    assert!(s.max_concurrent >= 2);
}

#[test]
fn hang_holds_requests_until_released() {
    let u = start("hang", Behaviour::ok().with_hang(true));
    let addr = u.addr();
    let waiter = thread::spawn(move || {
        let t = Instant::now();
        let r = Client::new(addr).get("/", &[]).unwrap();
        (r.status, t.elapsed())
    });
    eventually("request in flight", || u.stats().in_flight == 1);
    thread::sleep(Duration::from_millis(200));
    assert!(!waiter.is_finished());
    u.set_behaviour(Behaviour::ok());
    let (status, took) = waiter.join().unwrap();
    assert_eq!(status, 200);
    assert!(took >= Duration::from_millis(200));

    // A client giving up frees the server thread: no leak while still hanging.
    u.set_behaviour(Behaviour::ok().with_hang(true));
    let mut c = Client::new(addr).with_timeout(Duration::from_millis(200));
    assert!(matches!(c.get("/", &[]), Err(Error::Timeout)));
    drop(c);
    eventually("hung request dropped", || u.stats().in_flight == 0);
    assert_eq!(u.stats().status(200), 1);
}

#[test]
fn reset_fraction_sends_rst() {
    let u = start("rst", Behaviour::ok().with_reset_fraction(1.0));
    let mut c = Client::new(u.addr());
    let e = c.get("/", &[]).unwrap_err();
    assert!(matches!(e, Error::Reset), "expected reset, got {e:?}");
    assert_eq!(u.stats().resets, 1);
    u.set_behaviour(Behaviour::ok());
    assert_eq!(
        c.get("/", &[]).unwrap().status,
        200,
        "client reconnects after an error"
    );
    assert_eq!(c.connects(), 2);
}

#[test]
fn behaviour_changes_over_http_control_path() {
    let u = start("ctl", Behaviour::ok());
    let mut c = Client::new(u.addr());
    let put = |c: &mut Client, body: &str| {
        c.request("PUT", "/_upstream/behaviour", &[], body.as_bytes())
            .unwrap()
    };
    let r = put(
        &mut c,
        r#"{"statusMix":[{"status":503,"weight":1}],"retryAfterSecs":7}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = c.get("/", &[]).unwrap();
    assert_eq!((r.status, r.header("retry-after")), (503, Some("7")));
    let r = c
        .request(
            "PATCH",
            "/_upstream/behaviour",
            &[],
            br#"{"latency":{"baseMs":1}}"#,
        )
        .unwrap();
    assert_eq!(r.status, 200);
    let b = u.behaviour();
    assert_eq!(
        (b.latency.base_ms, b.retry_after_secs),
        (1, Some(7)),
        "patch keeps other fields"
    );

    // Control requests are not traffic.
    let s: UpstreamStats = c.get("/_upstream/stats", &[]).unwrap().json().unwrap();
    assert_eq!((s.requests, s.status(503)), (1, 1));
    assert_eq!(
        c.post("/_upstream/reset-stats", &[], b"").unwrap().status,
        200
    );
    assert_eq!(u.stats().requests, 0);

    // Bad input: 400 with a reason, behaviour unchanged, server alive.
    for bad in [
        "{not json",
        r#"{"statuzMix":[]}"#,
        r#"{"statusMix":[{"status":700,"weight":1}]}"#,
        r#"{"resetFraction":2}"#,
        "\u{0}\u{ff}",
    ] {
        let r = put(&mut c, bad);
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert!(r.text().contains("invalid behaviour"));
    }
    assert_eq!(c.get("/_upstream/nope", &[]).unwrap().status, 404);
    assert_eq!(
        c.request("DELETE", "/_upstream/stats", &[], b"")
            .unwrap()
            .status,
        405
    );
    assert_eq!(u.behaviour().latency.base_ms, 1);

    let remote = RemoteUpstream::new(u.addr());
    remote.set_behaviour(&Behaviour::status(202)).unwrap();
    remote.patch_behaviour(r#"{"hang":false}"#).unwrap();
    assert!(remote.patch_behaviour(r#"{"hang":1}"#).is_err());
    assert_eq!(c.get("/", &[]).unwrap().status, 202);
    assert_eq!(remote.stats().unwrap().status(202), 1);
    assert_eq!(remote.behaviour().unwrap(), Behaviour::status(202));
    remote.reset_stats().unwrap();
    assert_eq!(u.stats().requests, 0);
}

#[test]
fn garbage_on_the_socket_does_not_hurt() {
    let u = start("g", Behaviour::ok());
    let inputs: Vec<Vec<u8>> = vec![
        b"\x00\xff\xfe garbage \r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nContent-Length: abc\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nno colon here\r\n\r\n".to_vec(),
        b"GET / HTTP/2.0\r\n\r\n".to_vec(),
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
        format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(70_000)).into_bytes(),
        b"GET / HTTP/1.1\r\nHost: trunc".to_vec(), // then EOF
        b"\r\n\r\n\r\n".to_vec(),
    ];
    for input in &inputs {
        let mut s = TcpStream::connect(u.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let _ = s.write_all(input);
        let _ = s.shutdown(Shutdown::Write);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let out = String::from_utf8_lossy(&out);
        assert!(out.is_empty() || out.starts_with("HTTP/1.1 400"), "{out}");
    }
    // A chunked request body is read properly; pipelined requests are answered in order.
    let mut s = TcpStream::connect(u.addr()).unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.0\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert_eq!(out.matches("HTTP/1.1 200").count(), 2, "{out}");
    let mut c = Client::new(u.addr());
    assert_eq!(c.get("/", &[]).unwrap().status, 200);
    let st = u.stats();
    assert!(st.bad_requests >= 7, "{st:?}");
    assert_eq!(st.in_flight, 0);
}

#[test]
fn stop_closes_listener_and_connections() {
    let u = start("s", Behaviour::ok().with_latency_ms(5_000, 0));
    let addr = u.addr();
    let idle = TcpStream::connect(addr).unwrap();
    let busy = thread::spawn(move || Client::new(addr).get("/", &[]));
    eventually("busy request", || u.stats().in_flight == 1);
    let t = Instant::now();
    u.stop();
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "stop does not wait for latency"
    );
    assert!(busy.join().unwrap().is_err());
    let mut b = [0u8; 1];
    idle.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert_eq!(
        (&idle).read(&mut b).unwrap_or(0),
        0,
        "idle connection closed"
    );
    assert!(TcpStream::connect(addr).is_err(), "listener closed");
}

#[test]
fn connection_cap_refuses_extra_connections() {
    let opts = UpstreamOptions {
        max_connections: 2,
        ..UpstreamOptions::new("cap")
    };
    let u = Upstream::start_with(opts).unwrap();
    let _a = TcpStream::connect(u.addr()).unwrap();
    let _b = TcpStream::connect(u.addr()).unwrap();
    eventually("two connections", || u.stats().connections == 2);
    let mut c = Client::new(u.addr());
    assert!(c.get("/", &[]).is_err());
    assert_eq!(u.stats().refused_connections, 1);
}

/// A server that answers one request per connection and then closes without saying so, like a
/// keep-alive peer timing out idle connections; answers are chunked.
fn one_shot_server() -> (SocketAddr, thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let h = thread::spawn(move || {
        for _ in 0..2 {
            let (s, _) = l.accept().unwrap();
            let mut r = BufReader::new(&s);
            let mut line = String::new();
            while r.read_line(&mut line).unwrap() > 2 {
                line.clear();
            }
            (&s).write_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
            )
            .unwrap();
            thread::sleep(Duration::from_millis(50));
        }
    });
    (addr, h)
}

#[test]
fn client_keeps_alive_and_reconnects() {
    let u = start("ka", Behaviour::ok());
    let mut c = Client::new(u.addr());
    for _ in 0..20 {
        assert_eq!(c.get("/", &[]).unwrap().status, 200);
    }
    assert_eq!(c.connects(), 1);
    let r = c
        .request("PUT", "/", &[("content-type", "text/plain")], b"body")
        .unwrap();
    assert_eq!(r.status, 200);
    let r = c.request("HEAD", "/", &[], b"").unwrap();
    assert!(r.body.is_empty() && r.status == 200);
    assert_eq!(c.get("/", &[("connection", "close")]).unwrap().status, 200);
    assert_eq!(c.get("/", &[]).unwrap().status, 200);
    assert_eq!(c.connects(), 2, "server honoured connection: close");

    let (addr, server) = one_shot_server();
    let mut c = Client::new(addr);
    assert_eq!(c.get("/", &[]).unwrap().text(), "hi");
    thread::sleep(Duration::from_millis(100)); // server has closed the idle connection
    assert_eq!(c.get("/", &[]).unwrap().text(), "hi");
    assert_eq!(c.connects(), 2);
    server.join().unwrap();

    let dead = Client::new(addr).get("/", &[]).unwrap_err();
    assert!(matches!(dead, Error::Connect(_)), "{dead:?}");
}

#[test]
fn load_generators_report_statuses_and_upstreams() {
    let u = start("u0", Behaviour::ok().with_status_mix(&[(200, 9), (500, 1)]));
    let report = closed_loop(
        u.addr(),
        &RequestSpec::get("/").with_header("x-test", "1"),
        &ClosedLoop {
            requests: 200,
            threads: 4,
            ..ClosedLoop::default()
        },
    );
    assert_eq!(report.sent, 200);
    assert_eq!(report.responses(), 200);
    assert_eq!(report.upstream("u0"), 200);
    assert_eq!(report.ok() + report.status(500), 200);
    assert!(report.status(500) > 5);
    assert_eq!(report.latencies.len(), 200);
    assert!(report.percentile(50.0) <= report.percentile(99.0));
    // One keep-alive connection per thread that got work, never one per request (a thread
    // that starts late may find the 200 requests already taken: CI saw 1 of 4).
    let connections = u.stats().connections;
    assert!((1..=4).contains(&connections), "{connections} connections");

    u.set_behaviour(Behaviour::ok().with_latency_ms(20, 0));
    let t = Instant::now();
    let report = open_loop(
        u.addr(),
        &RequestSpec::get("/"),
        &OpenLoop {
            rps: 200.0,
            duration: Duration::from_secs(1),
            workers: 8,
            ..OpenLoop::default()
        },
    );
    assert_eq!(report.sent, 200, "{}", report.summary());
    assert_eq!(
        (report.ok(), report.dropped, report.error_count()),
        (200, 0, 0)
    );
    assert!(
        t.elapsed() < Duration::from_millis(1_500),
        "constant rate, not faster or slower"
    );
    assert!(report.percentile(50.0).unwrap() >= Duration::from_millis(20));
    // Concurrency stays near rate x latency (≈4), far below the worker count cap.
    assert!(u.stats().max_concurrent <= 8);

    // Overload: 2 workers cannot keep up with 100 rps at 100 ms each; the run stays bounded.
    u.set_behaviour(Behaviour::ok().with_latency_ms(100, 0));
    let report = open_loop(
        u.addr(),
        &RequestSpec::get("/"),
        &OpenLoop {
            rps: 100.0,
            duration: Duration::from_millis(500),
            workers: 2,
            grace: Duration::from_millis(200),
            ..OpenLoop::default()
        },
    );
    assert!(report.dropped > 0, "{}", report.summary());
    assert_eq!(report.sent + report.dropped, 50);
    assert!(report.elapsed < Duration::from_millis(1_000));
    assert!(
        report.percentile(99.0).unwrap() > Duration::from_millis(300),
        "queueing is measured"
    );
}

#[test]
fn binary_serves_until_stdin_closes() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_reflex-upstream"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--listen",
            "127.0.0.1:0",
            "--name",
            "a",
        ])
        .args([
            "--behaviour",
            r#"{"statusMix":[{"status":201,"weight":1}]}"#,
        ])
        .arg("--exit-on-stdin-eof")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut servers = Vec::new();
    for _ in 0..2 {
        let line = lines.next().unwrap().unwrap();
        let parts: Vec<&str> = line.split(' ').collect();
        assert_eq!(parts[0], "listening", "{line}");
        servers.push((
            parts[1].to_string(),
            parts[2].parse::<SocketAddr>().unwrap(),
        ));
    }
    assert_eq!(servers[0].0, "a");
    assert_eq!(servers[1].0, "u1");
    for (name, addr) in &servers {
        let r = Client::new(*addr).get("/", &[]).unwrap();
        assert_eq!((r.status, r.upstream_id()), (201, Some(name.as_str())));
    }
    RemoteUpstream::new(servers[1].1)
        .set_behaviour(&Behaviour::status(204))
        .unwrap();
    assert_eq!(Client::new(servers[1].1).get("/", &[]).unwrap().status, 204);
    drop(child.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("reflex-upstream did not exit on stdin EOF");
        }
        thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());

    let bad = Command::new(env!("CARGO_BIN_EXE_reflex-upstream"))
        .args(["--listen", "nope"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn behaviour_json_shape_is_camel_case_and_partial() {
    let full = r#"{"statusMix": [{"status": 200, "weight": 95}, {"status": 503, "weight": 5}],
        "latency": {"baseMs": 5, "jitterMs": 2, "slowFraction": 0.0, "slowMs": 0},
        "capacity": {"concurrency": 0, "queue": 0},
        "hang": false, "resetFraction": 0.0, "retryAfterSecs": null}"#;
    let b = Behaviour::from_json(full).unwrap();
    assert_eq!(b.status_mix.len(), 2);
    assert_eq!(b.latency.base_ms, 5);
    let back: Behaviour = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
    assert_eq!(back, b);
    assert_eq!(Behaviour::from_json("{}").unwrap(), Behaviour::default());
    let partial = Behaviour::from_json(r#"{"latency":{"slowMs":9}}"#).unwrap();
    assert_eq!((partial.latency.slow_ms, partial.latency.base_ms), (9, 0));
    assert!(Upstream::start("bad", Behaviour::status(99)).is_err());
}
