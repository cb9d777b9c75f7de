//! A small W3C WebDriver client driving a real headless Chromium through
//! `chromedriver` (Debian packages `chromium` and `chromium-driver`, which
//! `tests/run.sh` installs): start it, open pages, find elements by CSS, read text and
//! attributes, click, type, read cookies, take PNG screenshots.
//!
//! It speaks JSON over HTTP/1.1 to chromedriver on loopback, one connection per command.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The key of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A running chromedriver and one browser session.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

/// An element of the current page.
#[derive(Clone, Debug)]
pub struct Element(String);

fn which(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    names.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

impl Browser {
    /// Starts chromedriver and a headless Chromium window of `width` × `height`, which
    /// trusts any certificate (the cluster's CA is the test's own).
    pub async fn start(width: u32, height: u32) -> Browser {
        let driver = which(&["chromedriver"]).expect(
            "chromedriver is not installed: run the tests with tests/run.sh, which installs \
             the Debian packages chromium and chromium-driver",
        );
        let chromium = which(&["chromium", "chromium-browser"]).expect("chromium is not installed");
        let port = crate::free_port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let profile = tempfile::tempdir().expect("profile dir");
        let mut browser = Browser {
            driver: child,
            port,
            session: String::new(),
            _profile: profile,
        };
        crate::eventually(Duration::from_secs(30), || {
            browser.call("GET", "/status", None)
        })
        .await;
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--no-first-run", "--disable-extensions", "--hide-scrollbars",
                         format!("--window-size={width},{height}"),
                         format!("--user-data-dir={}", browser._profile.path().display())],
            }
        }}});
        let answer = browser
            .call("POST", "/session", Some(caps))
            .await
            .expect("a browser session");
        browser.session = answer["sessionId"]
            .as_str()
            .expect("session id")
            .to_string();
        browser
    }

    /// Sends one WebDriver command; the answer's `value`, or its error.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let mut tcp = TcpStream::connect(("127.0.0.1", self.port))
            .await
            .map_err(|e| e.to_string())?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            self.port,
            body.len()
        );
        tcp.write_all(head.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        tcp.write_all(body.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let (head, payload) = read_answer(&mut tcp).await?;
        let ok = head.split_whitespace().nth(1) == Some("200");
        let json: Value = serde_json::from_str(&payload).map_err(|e| format!("{e}: {payload}"))?;
        let value = json.get("value").cloned().unwrap_or(Value::Null);
        if ok {
            Ok(value)
        } else {
            Err(format!("{} — {}", value["error"], value["message"]))
        }
    }

    async fn command(&self, method: &str, what: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{what}", self.session);
        self.call(method, &path, body)
            .await
            .unwrap_or_else(|e| panic!("webdriver {method} {what}: {e}"))
    }

    pub async fn goto(&self, url: &str) {
        self.command("POST", "/url", Some(json!({ "url": url })))
            .await;
    }

    pub async fn url(&self) -> String {
        self.command("GET", "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub async fn title(&self) -> String {
        self.command("GET", "/title", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The elements matching `css` on the page now (none: empty).
    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        let found = self
            .command(
                "POST",
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        found
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e[ELEMENT].as_str())
                    .map(|s| Element(s.into()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The first element matching `css`, waiting up to `timeout` for it to appear.
    pub async fn wait_for(&self, css: &str, timeout: Duration) -> Element {
        let started = std::time::Instant::now();
        loop {
            if let Some(e) = self.find_all(css).await.into_iter().next() {
                return e;
            }
            if started.elapsed() > timeout {
                let url = self.url().await;
                let source = self.command("GET", "/source", None).await;
                let source = source.as_str().unwrap_or_default();
                let source = &source[..source.len().min(3000)];
                panic!("no element {css:?} on {url} within {timeout:?}; the page:\n{source}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The first element matching `css`, which must be there now.
    pub async fn find(&self, css: &str) -> Element {
        self.wait_for(css, Duration::ZERO).await
    }

    pub async fn text(&self, e: &Element) -> String {
        let v = self
            .command("GET", &format!("/element/{}/text", e.0), None)
            .await;
        v.as_str().unwrap_or_default().to_string()
    }

    pub async fn attribute(&self, e: &Element, name: &str) -> Option<String> {
        let v = self
            .command("GET", &format!("/element/{}/attribute/{name}", e.0), None)
            .await;
        v.as_str().map(str::to_string)
    }

    /// A DOM property of the element (`textContent` reads text that is not rendered,
    /// such as an SVG title).
    pub async fn property(&self, e: &Element, name: &str) -> serde_json::Value {
        self.command("GET", &format!("/element/{}/property/{name}", e.0), None)
            .await
    }

    pub async fn click(&self, e: &Element) {
        self.command("POST", &format!("/element/{}/click", e.0), Some(json!({})))
            .await;
    }

    pub async fn type_into(&self, e: &Element, text: &str) {
        self.command("POST", &format!("/element/{}/clear", e.0), Some(json!({})))
            .await;
        self.command(
            "POST",
            &format!("/element/{}/value", e.0),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Presses keys on the page (`\u{E004}` is Tab, `\u{E007}` Enter).
    pub async fn keys(&self, keys: &str) {
        let actions: Vec<Value> = keys
            .chars()
            .flat_map(|c| {
                let k = c.to_string();
                [
                    json!({"type": "keyDown", "value": k}),
                    json!({"type": "keyUp", "value": k}),
                ]
            })
            .collect();
        let body = json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]});
        self.command("POST", "/actions", Some(body)).await;
    }

    /// The element that has the keyboard focus.
    pub async fn focused(&self) -> Element {
        let v = self.command("GET", "/element/active", None).await;
        Element(v[ELEMENT].as_str().expect("an active element").to_string())
    }

    /// Runs `script` (a function body) in the page and answers what it returns.
    pub async fn execute(&self, script: &str) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// The browser's cookies for the current page, as WebDriver describes them.
    pub async fn cookies(&self) -> Vec<Value> {
        self.command("GET", "/cookie", None)
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// What the pages printed to the browser's console since the last call (errors,
    /// Content-Security-Policy violations), one line each.
    pub async fn console_log(&self) -> Vec<String> {
        let v = self
            .command("POST", "/se/log", Some(json!({"type": "browser"})))
            .await;
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|e| format!("{} {}", e["level"], e["message"]))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub async fn resize(&self, width: u32, height: u32) {
        self.command(
            "POST",
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await;
    }

    /// A PNG of the viewport, written to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let v = self.command("GET", "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("base64 PNG"))
            .expect("screenshot decodes");
        std::fs::write(path, png).expect("screenshot written");
    }
}

/// Reads one HTTP/1.1 answer: the head, then as many bytes as its content-length says
/// (chromedriver keeps the connection open whatever the request asked).
async fn read_answer(tcp: &mut TcpStream) -> Result<(String, String), String> {
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    loop {
        let n = tcp.read(&mut chunk).await.map_err(|e| e.to_string())?;
        raw.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&raw);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok());
            if length.is_some_and(|l| body.len() >= l) || n == 0 {
                return Ok((head.to_string(), body.to_string()));
            }
        }
        if n == 0 {
            return Err("the driver closed the connection without an answer".into());
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends the browser with its driver; the profile directory goes with the struct.
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = Command::new("pkill")
            .args([
                "-f",
                "--",
                &format!("--user-data-dir={}", self._profile.path().display()),
            ])
            .status();
    }
}
