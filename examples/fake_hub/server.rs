//! A small imitation of the Hugging Face Hub on loopback, for tests: the
//! revision API (`/api/models/{repo}/revision/{rev}`, with `blobs=true`
//! sizes and LFS sha256), the tree API, `HEAD`/`GET /{repo}/resolve/{rev}/{path}`
//! with `X-Repo-Commit`, `ETag`/`X-Linked-Etag`/`X-Linked-Size`, LFS files
//! redirected to a "CDN" on another origin (`localhost` instead of
//! `127.0.0.1`), `Range` requests, gated repos, branches that move, and
//! injected faults (a status, a cut-off body, a corrupted body, a range
//! ignored, a slow stream). It logs every request it sees.
//!
//! Used in-process by `tests/fetch*.rs` (`#[path]`-included) and as the
//! `fake_hub` example binary by `tests/interop/test_fetch.py`. Bounded: each
//! connection times out, and the server stops itself at its deadline.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// One file of a commit.
#[derive(Clone)]
pub struct HubFile {
    pub path: String,
    pub bytes: Arc<Vec<u8>>,
    pub lfs: bool,
}

impl HubFile {
    pub fn new(path: &str, bytes: impl Into<Vec<u8>>, lfs: bool) -> HubFile {
        HubFile {
            path: path.to_string(),
            bytes: Arc::new(bytes.into()),
            lfs,
        }
    }

    pub fn sha256(&self) -> String {
        hex(&Sha256::digest(&*self.bytes))
    }

    /// A stand-in for the git blob id: 40 hex, a function of the contents.
    pub fn oid(&self) -> String {
        let mut h = Sha256::new();
        h.update(format!("blob {}\0", self.bytes.len()));
        h.update(&*self.bytes);
        hex(&h.finalize())[..40].to_string()
    }

    /// The name a client caches it under.
    pub fn etag(&self) -> String {
        if self.lfs {
            self.sha256()
        } else {
            self.oid()
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift), for weights.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[derive(Default)]
struct Repo {
    commits: HashMap<String, Vec<HubFile>>,
    refs: HashMap<String, String>,
    /// Gated: requests need `Authorization: Bearer <token>`.
    gate_token: Option<String>,
    /// Whether the listing says so (`"gated": "manual"`); some mirrors don't.
    gate_listed: bool,
}

/// What a fault does to a matching request.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer this status (with `Retry-After` seconds when given).
    Status {
        status: u16,
        retry_after: Option<u64>,
    },
    /// Announce the full length, send this many body bytes, close.
    Truncate { after: usize },
    /// Flip one byte of the body.
    Corrupt,
    /// Answer 200 with the whole body whatever the `Range`.
    IgnoreRange,
}

/// A fault for the next `times` requests of `method` whose path contains
/// `path_contains`.
#[derive(Clone, Debug)]
pub struct FaultRule {
    pub method: &'static str,
    pub path_contains: String,
    pub times: usize,
    pub fault: Fault,
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Logged {
    id: u64,
    pub method: String,
    pub path: String,
    pub host: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
    pub status: u16,
    /// Body bytes sent.
    pub sent: u64,
    /// When the request arrived and when its answer was done, since start.
    pub started: Duration,
    pub ended: Duration,
}

impl Logged {
    fn to_json(&self) -> String {
        serde_json::json!({
            "method": self.method,
            "path": self.path,
            "host": self.host,
            "range": self.range,
            "authorization": self.authorization,
            "status": self.status,
            "sent": self.sent,
            "started_ms": self.started.as_millis() as u64,
            "ended_ms": self.ended.as_millis() as u64,
        })
        .to_string()
    }
}

#[derive(Default)]
struct State {
    repos: HashMap<String, Repo>,
    faults: Vec<FaultRule>,
    log: Vec<Logged>,
    /// Body streaming pace for paths containing the key: (bytes, pause).
    slow: Vec<(String, usize, Duration)>,
    started: Option<Instant>,
    next_id: u64,
}

/// A running imitation Hub.
pub struct FakeHub {
    state: Arc<Mutex<State>>,
    port: u16,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl FakeHub {
    /// Starts on 127.0.0.1 (a free port); stops itself after `lifetime`.
    pub fn start(lifetime: Duration) -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            started: Some(Instant::now()),
            ..State::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + lifetime;
        {
            let stop = stop.clone();
            thread::spawn(move || {
                while Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
                    thread::sleep(Duration::from_millis(100));
                }
                stop.store(true, Ordering::SeqCst);
                let _ = TcpStream::connect(("127.0.0.1", port));
            });
        }
        let accept = {
            let state = state.clone();
            let stop = stop.clone();
            thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let state = state.clone();
                    let stop = stop.clone();
                    thread::spawn(move || {
                        let _ = serve(conn, &state, port, &stop);
                    });
                }
            })
        };
        FakeHub {
            state,
            port,
            stop,
            accept: Some(accept),
        }
    }

    /// `http://127.0.0.1:PORT`: what HF_ENDPOINT is set to.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Commits `files` to `branch` of `repo` (creating both); returns the
    /// commit id. A second call moves the branch.
    pub fn commit(&self, repo: &str, branch: &str, files: Vec<HubFile>) -> String {
        let mut st = self.state.lock().unwrap();
        let r = st.repos.entry(repo.to_string()).or_default();
        let mut h = Sha256::new();
        h.update(repo);
        h.update(r.refs.get(branch).cloned().unwrap_or_default());
        for f in &files {
            h.update(&f.path);
            h.update(f.etag());
        }
        let commit = hex(&h.finalize())[..40].to_string();
        r.commits.insert(commit.clone(), files);
        r.refs.insert(branch.to_string(), commit.clone());
        commit
    }

    /// Points `tag` at an existing commit.
    pub fn tag(&self, repo: &str, tag: &str, commit: &str) {
        let mut st = self.state.lock().unwrap();
        st.repos
            .get_mut(repo)
            .unwrap()
            .refs
            .insert(tag.into(), commit.into());
    }

    /// Makes `repo` gated: only `Bearer token` gets its files. `listed`:
    /// whether its revision listing says `"gated": "manual"`.
    pub fn gate(&self, repo: &str, token: &str, listed: bool) {
        let mut st = self.state.lock().unwrap();
        let r = st.repos.entry(repo.into()).or_default();
        r.gate_token = Some(token.into());
        r.gate_listed = listed;
    }

    pub fn fault(&self, method: &'static str, path_contains: &str, times: usize, fault: Fault) {
        self.state.lock().unwrap().faults.push(FaultRule {
            method,
            path_contains: path_contains.into(),
            times,
            fault,
        });
    }

    /// Streams bodies of paths containing `path_contains` at `bytes` per
    /// `pause`.
    pub fn slow(&self, path_contains: &str, bytes: usize, pause: Duration) {
        self.state
            .lock()
            .unwrap()
            .slow
            .push((path_contains.into(), bytes.max(1), pause));
    }

    pub fn unslow(&self) {
        self.state.lock().unwrap().slow.clear();
    }

    pub fn log(&self) -> Vec<Logged> {
        self.state.lock().unwrap().log.clone()
    }

    pub fn clear_log(&self) {
        self.state.lock().unwrap().log.clear();
    }

    /// Blocks until the server stops (its deadline, or [`FakeHub::stop`]).
    pub fn wait(mut self) {
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop();
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

struct Request {
    method: String,
    target: String,
    headers: HashMap<String, String>,
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Arc<Vec<u8>>,
    /// Byte range of `body` to send.
    range: (usize, usize),
    truncate_after: Option<usize>,
    corrupt: bool,
    slow: Option<(usize, Duration)>,
}

impl Response {
    fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Arc::new(Vec::new()),
            range: (0, 0),
            truncate_after: None,
            corrupt: false,
            slow: None,
        }
    }

    fn header(mut self, k: &str, v: impl Into<String>) -> Response {
        self.headers.push((k.into(), v.into()));
        self
    }

    fn body(mut self, b: impl Into<Vec<u8>>) -> Response {
        let b: Vec<u8> = b.into();
        self.range = (0, b.len());
        self.body = Arc::new(b);
        self
    }

    fn error(status: u16, code: &str, message: &str) -> Response {
        Response::new(status)
            .header("X-Error-Code", code)
            .header("X-Error-Message", message)
            .header("Content-Type", "application/json")
            .body(serde_json::json!({ "error": message }).to_string())
    }
}

fn read_request(conn: &mut BufReader<TcpStream>) -> std::io::Result<Option<Request>> {
    let mut line = String::new();
    if conn.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let mut headers = HashMap::new();
    let mut total = 0;
    loop {
        let mut h = String::new();
        let n = conn.read_line(&mut h)?;
        total += n;
        if n == 0 || h == "\r\n" || h == "\n" || total > 64 * 1024 {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Ok(Some(Request {
        method,
        target,
        headers,
    }))
}

fn serve(
    conn: TcpStream,
    state: &Mutex<State>,
    port: u16,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    conn.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = conn;
    let Some(req) = read_request(&mut reader)? else {
        return Ok(());
    };
    let t0 = state.lock().unwrap().started.expect("set at start");
    let started = t0.elapsed();
    if stop.load(Ordering::SeqCst) {
        return Ok(());
    }
    let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
    let path = percent_decode(path);
    let mut resp = route(&req, &path, query, state, port);
    let is_head = req.method == "HEAD";

    // Faults and pace.
    {
        let mut st = state.lock().unwrap();
        if let Some(i) = st
            .faults
            .iter()
            .position(|f| f.method == req.method && path.contains(&f.path_contains) && f.times > 0)
        {
            st.faults[i].times -= 1;
            match st.faults[i].fault.clone() {
                Fault::Status {
                    status,
                    retry_after,
                } => {
                    resp = Response::error(status, "", "injected fault");
                    if let Some(s) = retry_after {
                        resp = resp.header("Retry-After", s.to_string());
                    }
                }
                Fault::Truncate { after } => resp.truncate_after = Some(after),
                Fault::Corrupt => resp.corrupt = true,
                Fault::IgnoreRange => {
                    if resp.status == 206 {
                        resp.status = 200;
                        resp.range = (0, resp.body.len());
                        resp.headers.retain(|(k, _)| k != "Content-Range");
                    }
                }
            }
        }
        resp.slow = st
            .slow
            .iter()
            .find(|(p, _, _)| path.contains(p.as_str()))
            .map(|(_, b, d)| (*b, *d));
    }

    let len = resp.range.1 - resp.range.0;
    let mut head = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    for (k, v) in &resp.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {len}\r\nConnection: close\r\n\r\n"
    ));
    // Logged before a byte goes out, and `sent` counted before each write:
    // a client that has its answer finds it in the log already.
    let entry = (!path.starts_with("/_log")).then(|| {
        let mut st = state.lock().unwrap();
        st.next_id += 1;
        let id = st.next_id;
        st.log.push(Logged {
            id,
            method: req.method.clone(),
            path: req.target.clone(),
            host: req.headers.get("host").cloned().unwrap_or_default(),
            range: req.headers.get("range").cloned(),
            authorization: req.headers.get("authorization").cloned(),
            status: resp.status,
            sent: 0,
            started,
            ended: started,
        });
        id
    });
    let account = |delta: i64| {
        let mut st = state.lock().unwrap();
        if let Some(l) = st.log.iter_mut().rev().find(|l| Some(l.id) == entry) {
            l.sent = (l.sent as i64 + delta) as u64;
            l.ended = t0.elapsed();
        }
    };
    out.write_all(head.as_bytes())?;
    let mut result = Ok(());
    if !is_head {
        let mut body = resp.body[resp.range.0..resp.range.1].to_vec();
        if resp.corrupt && !body.is_empty() {
            let mid = body.len() / 2;
            body[mid] ^= 0xff;
        }
        let end = resp
            .truncate_after
            .map_or(body.len(), |a| a.min(body.len()));
        let (step, pause) = resp.slow.unwrap_or((1 << 20, Duration::ZERO));
        let mut at = 0;
        while at < end {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let next = (at + step).min(end);
            account((next - at) as i64);
            if let Err(e) = out.write_all(&body[at..next]) {
                account(-((next - at) as i64));
                result = Err(e);
                break;
            }
            at = next;
            if !pause.is_zero() && at < end {
                thread::sleep(pause);
            }
        }
    }
    let _ = out.flush();
    let _ = out.shutdown(Shutdown::Both);
    account(0);
    result
}

fn route(req: &Request, path: &str, query: &str, state: &Mutex<State>, port: u16) -> Response {
    if path == "/_log" {
        let st = state.lock().unwrap();
        let items: Vec<String> = st.log.iter().map(Logged::to_json).collect();
        return Response::new(200)
            .header("Content-Type", "application/json")
            .body(format!("[{}]", items.join(",")));
    }
    if let Some(sha) = path.strip_prefix("/cdn/") {
        let st = state.lock().unwrap();
        let file = st
            .repos
            .values()
            .flat_map(|r| r.commits.values().flatten())
            .find(|f| f.lfs && f.sha256() == sha)
            .cloned();
        return match file {
            Some(f) => ranged(req, f.bytes.clone()).header("ETag", format!("\"{sha}\"")),
            None => Response::new(404).body("no such object"),
        };
    }
    if let Some(rest) = path.strip_prefix("/api/models/") {
        return api(rest, query, state);
    }
    // /{org}/{name}/resolve/{rev}/{path}
    let parts: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    if parts.len() == 5 && parts[2] == "resolve" {
        let repo_id = format!("{}/{}", parts[0], parts[1]);
        let st = state.lock().unwrap();
        let repo = match access(req, &st, &repo_id) {
            Ok(r) => r,
            Err(e) => return e,
        };
        let Some(commit) = resolve_rev(repo, parts[3]) else {
            return Response::error(
                404,
                "RevisionNotFound",
                &format!("Invalid rev id: {}", parts[3]),
            );
        };
        let Some(file) = repo.commits[&commit]
            .iter()
            .find(|f| f.path == parts[4])
            .cloned()
        else {
            return Response::error(404, "EntryNotFound", "Entry not found")
                .header("X-Repo-Commit", commit);
        };
        if file.lfs {
            let sha = file.sha256();
            return Response::new(302)
                .header("Location", format!("http://localhost:{port}/cdn/{sha}"))
                .header("X-Repo-Commit", commit)
                .header("X-Linked-Etag", format!("\"{sha}\""))
                .header("X-Linked-Size", file.bytes.len().to_string())
                .header("ETag", format!("\"{}\"", file.oid()));
        }
        return ranged(req, file.bytes.clone())
            .header("X-Repo-Commit", commit)
            .header("ETag", format!("\"{}\"", file.oid()));
    }
    Response::new(404).body("not found")
}

fn api(rest: &str, query: &str, state: &Mutex<State>) -> Response {
    // {org}/{name}/revision/{rev} or {org}/{name}/tree/{rev}[/path]
    let parts: Vec<&str> = rest.splitn(4, '/').collect();
    if parts.len() < 4 {
        return Response::new(404).body("not found");
    }
    let repo_id = format!("{}/{}", parts[0], parts[1]);
    let st = state.lock().unwrap();
    // As on the Hub, a gated repo's listing is public; its files are not.
    let Some(repo) = st.repos.get(&repo_id) else {
        return Response::error(401, "RepoNotFound", "Repository not found");
    };
    let rev = parts[3].split('/').next().unwrap_or_default();
    let rev = if parts[2] == "revision" {
        parts[3]
    } else {
        rev
    };
    let Some(commit) = resolve_rev(repo, rev) else {
        return Response::error(404, "RevisionNotFound", &format!("Invalid rev id: {rev}"));
    };
    let files = &repo.commits[&commit];
    let blobs = query
        .split('&')
        .any(|kv| kv == "blobs=true" || kv == "blobs=True");
    let body = match parts[2] {
        "revision" => {
            let siblings: Vec<serde_json::Value> = files
                .iter()
                .map(|f| {
                    let mut s = serde_json::json!({ "rfilename": f.path });
                    if blobs {
                        s["size"] = f.bytes.len().into();
                        s["blobId"] = f.oid().into();
                        if f.lfs {
                            s["lfs"] = serde_json::json!({
                                "sha256": f.sha256(), "size": f.bytes.len(), "pointerSize": 134
                            });
                        }
                    }
                    s
                })
                .collect();
            serde_json::json!({
                "_id": commit, "id": repo_id, "modelId": repo_id, "sha": commit,
                "private": false, "disabled": false,
                "gated": if repo.gate_listed { serde_json::json!("manual") } else { serde_json::json!(false) },
                "downloads": 0, "likes": 0, "tags": [], "lastModified": "2026-01-01T00:00:00.000Z",
                "siblings": siblings,
            })
        }
        "tree" => {
            let entries: Vec<serde_json::Value> = files
                .iter()
                .map(|f| {
                    let mut e = serde_json::json!({
                        "type": "file", "oid": f.oid(), "size": f.bytes.len(), "path": f.path
                    });
                    if f.lfs {
                        e["lfs"] = serde_json::json!({
                            "oid": f.sha256(), "size": f.bytes.len(), "pointerSize": 134
                        });
                    }
                    e
                })
                .collect();
            serde_json::Value::Array(entries)
        }
        _ => return Response::new(404).body("not found"),
    };
    Response::new(200)
        .header("Content-Type", "application/json")
        .header("X-Repo-Commit", commit)
        .body(body.to_string())
}

/// The repo, or the Hub's answer for a missing or gated one.
fn access<'a>(req: &Request, st: &'a State, repo_id: &str) -> Result<&'a Repo, Response> {
    let Some(repo) = st.repos.get(repo_id) else {
        return Err(Response::error(401, "RepoNotFound", "Repository not found"));
    };
    if let Some(token) = &repo.gate_token {
        let sent = req.headers.get("authorization").cloned();
        if sent.as_deref() != Some(&format!("Bearer {token}")) {
            let status = if sent.is_some() { 403 } else { 401 };
            return Err(Response::error(
                status,
                "GatedRepo",
                &format!("Access to model {repo_id} is restricted. You must have access to it and be authenticated to access it. Please log in."),
            ));
        }
    }
    Ok(repo)
}

fn resolve_rev(repo: &Repo, rev: &str) -> Option<String> {
    if repo.commits.contains_key(rev) {
        return Some(rev.to_string());
    }
    repo.refs.get(rev).cloned()
}

/// 200, or 206/416 for a `Range: bytes=N-[M]` request.
fn ranged(req: &Request, bytes: Arc<Vec<u8>>) -> Response {
    let total = bytes.len();
    let mut r = Response::new(200).header("Accept-Ranges", "bytes");
    r.body = bytes;
    r.range = (0, total);
    if let Some(spec) = req
        .headers
        .get("range")
        .and_then(|v| v.strip_prefix("bytes="))
    {
        let (a, b) = spec.split_once('-').unwrap_or((spec, ""));
        let start: usize = a.trim().parse().unwrap_or(0);
        let end: usize = b
            .trim()
            .parse::<usize>()
            .map(|e| e + 1)
            .unwrap_or(total)
            .min(total);
        if start >= total {
            let mut r = Response::new(416).header("Content-Range", format!("bytes */{total}"));
            r.range = (0, 0);
            return r;
        }
        r.status = 206;
        r.range = (start, end);
        r = r.header(
            "Content-Range",
            format!("bytes {start}-{}/{total}", end - 1),
        );
    }
    r
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
