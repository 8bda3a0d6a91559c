//! A host of a test's own: a network namespace joined to this host by a
//! veth pair, with an address from 198.18.0.0/15 (RFC 2544's benchmarking
//! range, which no real network here uses), serving TCP. Tests send their
//! traffic to it and to nothing else. Needs root and iproute2's `ip`.
//!
//! The server answers each connection with the peer's address and a
//! newline, then each line it receives with `<peer> <line>`: a client sees
//! the address the backend saw it with, on connect and on every request.

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running backend host; dropping it removes it.
pub struct BackendHost {
    ns: String,
    host_link: String,
    /// The backend's address.
    pub addr: Ipv4Addr,
    /// The host side's address (the backend's gateway).
    pub gateway: Ipv4Addr,
    /// The TCP port it serves.
    pub port: u16,
    server: Child,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl BackendHost {
    /// Starts one on `net` (a /30 of 198.18.0.0/15: `.1` is the host side,
    /// `.2` the backend) serving on `port`. `tag` names its namespace and
    /// link (unique among concurrent tests: at most 5 characters).
    pub fn start(tag: &str, net: Ipv4Addr, port: u16) -> Result<BackendHost, String> {
        let range: crate::Ipv4Cidr = "198.18.0.0/15".parse().expect("valid");
        let o = net.octets();
        if !range.contains(net) || !o[3].is_multiple_of(4) {
            return Err(format!("{net} is not a /30 of 198.18.0.0/15"));
        }
        let ns = format!("thaw-test-{tag}");
        let host_link = format!("ttb-{tag}");
        let gateway = Ipv4Addr::from(u32::from(net) + 1);
        let addr = Ipv4Addr::from(u32::from(net) + 2);
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        let _ = Command::new("ip")
            .args(["link", "del", &host_link])
            .output();
        ip(&["netns", "add", &ns])?;
        let mut host = BackendHost {
            ns: ns.clone(),
            host_link: host_link.clone(),
            addr,
            gateway,
            port,
            // Replaced below; `true` exits at once.
            server: Command::new("true")
                .spawn()
                .map_err(|e| format!("cannot run true: {e}"))?,
        };
        ip(&[
            "link", "add", &host_link, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        ip(&["addr", "add", &format!("{gateway}/30"), "dev", &host_link])?;
        ip(&["link", "set", &host_link, "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/30"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &gateway.to_string(),
        ])?;
        let _ = host.server.wait();
        host.server = Command::new("ip")
            .args(["netns", "exec", &ns, "python3", "-c", SERVER])
            .arg(addr.to_string())
            .arg(port.to_string())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start the server: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let to = (addr, port).into();
            if std::net::TcpStream::connect_timeout(&to, Duration::from_millis(200)).is_ok() {
                return Ok(host);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err("the backend's server did not start".into())
    }
}

const SERVER: &str = r#"
import socket, sys, threading
def serve(c, peer):
    with c:
        c.sendall((peer + "\n").encode())
        f = c.makefile("rb")
        for line in f:
            c.sendall((peer + " " + line.decode().strip() + "\n").encode())
threading.stack_size(256 * 1024)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1024)
while True:
    c, a = s.accept()
    try:
        threading.Thread(target=serve, args=(c, a[0]), daemon=True).start()
    except RuntimeError:
        c.close()
"#;

impl Drop for BackendHost {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_link])
            .output();
    }
}
