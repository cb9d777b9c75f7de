//! A task's result made to fit what the spoke takes ([`MAX_TASK_RESULT`]), on the
//! envoy, before it is signed: output is cut by bytes (the tail kept, on a character
//! boundary) and the cut counted in `output_dropped`, so a verbose command still
//! reports its outcome instead of being refused for its size and counted timed out.

use prost::Message;
use vigo_common::limits::MAX_TASK_RESULT;
use vigo_proto::v1 as pb;

/// Room kept for what is set after fitting (sequence, timestamp) and field headers.
const SLACK: usize = 1024;
/// A refusal or failure message is a sentence, not output.
const MAX_MESSAGE: usize = 4096;

/// Cuts `body` until its encoding is within the spoke's limit.
pub fn fit(body: &mut pb::TaskResultBody) {
    let budget = MAX_TASK_RESULT - SLACK;
    if body.encoded_len() <= budget {
        return;
    }
    let mut dropped = cut_head(&mut body.message, MAX_MESSAGE);
    // Rows go first, from the end: a query's answer keeps its first collectors whole.
    while body.encoded_len() > budget {
        let Some(row) = body.rows.pop() else { break };
        dropped += row.encoded_len() as u64;
    }
    // Then the output streams share what is left: stderr up to half of it, stdout the
    // rest, either one's unused share going to the other.
    let streams = body.stdout.len() + body.stderr.len();
    let room = budget.saturating_sub(body.encoded_len().saturating_sub(streams));
    let err_keep = (room / 2)
        .max(room.saturating_sub(body.stdout.len()))
        .min(body.stderr.len());
    let out_keep = room.saturating_sub(err_keep);
    dropped += cut_head(&mut body.stdout, out_keep);
    dropped += cut_head(&mut body.stderr, err_keep);
    body.output_dropped = body.output_dropped.saturating_add(dropped);
}

/// Keeps the last `keep` bytes of `text` or fewer (a character is never split);
/// answers how many bytes went.
fn cut_head(text: &mut String, keep: usize) -> u64 {
    if text.len() <= keep {
        return 0;
    }
    let mut from = text.len() - keep;
    while !text.is_char_boundary(from) {
        from += 1;
    }
    text.drain(..from);
    from as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(n: usize) -> pb::QueryRow {
        pb::QueryRow {
            collector: format!("file:/etc/{n}"),
            fields: [("content".to_string(), "x".repeat(10_000))].into(),
            error: String::new(),
        }
    }

    /// The worst a capture can produce: 64 KiB of invalid UTF-8 per stream turns into
    /// three bytes per byte, and an `apply` task's lines are not capped at all.
    #[test]
    fn any_output_fits_and_the_cut_is_counted() {
        let lossy = String::from_utf8_lossy(&[0xff; 64 << 10]).into_owned();
        assert_eq!(lossy.len(), 3 * (64 << 10));
        let cases = [
            (lossy.clone(), lossy.clone(), vec![]),
            ("é".repeat(300_000), String::new(), vec![]),
            (String::new(), "e".repeat(1 << 20), vec![]),
            (String::new(), String::new(), (0..100).map(row).collect()),
        ];
        for (stdout, stderr, rows) in cases {
            let original = stdout.len() + stderr.len();
            let mut body = pb::TaskResultBody {
                status: "ok".into(),
                stdout,
                stderr,
                rows,
                output_dropped: 5,
                message: "m".repeat(100_000),
                ..Default::default()
            };
            fit(&mut body);
            body.sequence = u64::MAX;
            body.timestamp_ms = u64::MAX;
            body.envoy_id = u64::MAX;
            assert!(
                body.encoded_len() <= MAX_TASK_RESULT,
                "{}",
                body.encoded_len()
            );
            assert!(body.output_dropped > 5);
            assert_eq!(body.status, "ok", "the outcome stands");
            assert!(body.stdout.len() + body.stderr.len() <= original);
        }
    }

    #[test]
    fn a_result_within_the_limit_is_left_as_it_is() {
        let mut body = pb::TaskResultBody {
            stdout: "hello\n".into(),
            rows: vec![row(1)],
            ..Default::default()
        };
        let before = body.clone();
        fit(&mut body);
        assert_eq!(body, before);
    }

    #[test]
    fn the_tail_is_kept_on_a_character_boundary() {
        let mut text = "aé".repeat(10);
        assert_eq!(cut_head(&mut text, 4), 27, "byte 26 is inside an é");
        assert_eq!(text, "aé");
    }
}
