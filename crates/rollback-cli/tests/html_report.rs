//! A drill's HTML report, rendered by a real headless Chromium: the page is
//! self-contained, and the screenshot shows the SVG timeline with one bar per
//! step, parallel steps side by side in time and a later step to their right.
//! Needs CHROMIUM_BIN (scripts/testenv/chromium.sh).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use rollback_core::event::Outcome;
use rollback_core::report::outcome_colour;

/// How long Chromium may take to start, render and write the screenshot.
const CHROMIUM_WAIT: Duration = Duration::from_secs(120);

/// A temporary folder kept (and named on stderr) when the test fails, so the
/// screenshot can be looked at.
struct KeepOnPanic(Option<tempfile::TempDir>);

impl KeepOnPanic {
    fn new() -> Self {
        KeepOnPanic(Some(tempfile::tempdir().expect("temp dir")))
    }
    fn path(&self) -> &Path {
        self.0.as_ref().expect("dir").path()
    }
}

impl Drop for KeepOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(dir) = self.0.take() {
                eprintln!("screenshots kept in {}", dir.keep().display());
            }
        }
    }
}

/// `#rrggbb` as RGB.
fn rgb(hex: &str) -> [u8; 3] {
    let h = hex.trim_start_matches('#');
    let c = |i: usize| u8::from_str_radix(&h[i..i + 2], 16).expect("hex colour");
    [c(0), c(2), c(4)]
}

/// A decoded RGB(A) screenshot.
struct Shot {
    width: usize,
    height: usize,
    channels: usize,
    pixels: Vec<u8>,
}

impl Shot {
    fn load(path: &Path) -> Shot {
        let file = std::fs::File::open(path).expect("open screenshot");
        let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
        decoder.set_transformations(png::Transformations::normalize_to_color8());
        let mut reader = decoder.read_info().expect("PNG header");
        let mut pixels = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut pixels).expect("PNG frame");
        let channels = match info.color_type {
            png::ColorType::Rgb => 3,
            png::ColorType::Rgba => 4,
            other => panic!("unexpected PNG colour type {other:?}"),
        };
        pixels.truncate(info.buffer_size());
        Shot {
            width: info.width as usize,
            height: info.height as usize,
            channels,
            pixels,
        }
    }

    fn is(&self, x: usize, y: usize, colour: [u8; 3]) -> bool {
        const TOLERANCE: i16 = 6;
        let i = (y * self.width + x) * self.channels;
        (0..3).all(|c| (self.pixels[i + c] as i16 - colour[c] as i16).abs() <= TOLERANCE)
    }

    /// Horizontal bands of rows holding at least `min_run` consecutive pixels
    /// of `colour` (so that stray anti-aliased pixels of text do not count):
    /// for each band, its rows and the leftmost and rightmost x of that run in
    /// its middle row.
    fn bands(&self, colour: [u8; 3], min_run: usize) -> Vec<Band> {
        let run_in_row = |y: usize| -> Option<(usize, usize)> {
            let mut start = None;
            let mut best: Option<(usize, usize)> = None;
            for x in 0..=self.width {
                let hit = x < self.width && self.is(x, y, colour);
                match (hit, start) {
                    (true, None) => start = Some(x),
                    (false, Some(s)) => {
                        if x - s >= min_run && best.is_none() {
                            best = Some((s, x - 1));
                        }
                        start = None;
                    }
                    _ => {}
                }
            }
            best
        };
        let mut bands = Vec::new();
        let mut current: Option<(usize, usize)> = None;
        for y in 0..=self.height {
            let hit = y < self.height && run_in_row(y).is_some();
            match (hit, current) {
                (true, None) => current = Some((y, y)),
                (true, Some((top, _))) => current = Some((top, y)),
                (false, Some((top, bottom))) => {
                    let mid = (top + bottom) / 2;
                    let (left, right) = run_in_row(mid).expect("middle row has the run");
                    bands.push(Band {
                        top,
                        bottom,
                        left,
                        right,
                    });
                    current = None;
                }
                (false, None) => {}
            }
        }
        bands
    }
}

#[derive(Debug, Clone, Copy)]
struct Band {
    top: usize,
    bottom: usize,
    left: usize,
    right: usize,
}

/// Screenshots `html` with headless Chromium into `png` (a throwaway HOME
/// and profile under `scratch`).
fn screenshot(chromium: &str, html: &Path, png: &Path, scratch: &Path) {
    let home = scratch.join("chromium-home");
    std::fs::create_dir_all(&home).expect("chromium home");
    let mut cmd = Command::new(chromium);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        "--window-size=1100,1000",
    ])
    .arg(format!(
        "--user-data-dir={}",
        home.join("profile").display()
    ))
    .arg(format!("--screenshot={}", png.display()))
    .arg(format!("file://{}", html.display()))
    .env("HOME", &home)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start chromium");
    // Chromium is chatty on stderr (no D-Bus here); drain it on a thread so it
    // never blocks on a full pipe.
    let mut stderr = child.stderr.take().expect("stderr");
    let drain = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let status = wait_child(&mut child, CHROMIUM_WAIT, "chromium --screenshot");
    let log = drain.join().unwrap_or_default();
    assert!(
        status.success() && png.exists(),
        "chromium failed ({status}); its stderr:\n{log}"
    );
}

/// Runs a drill of `plan` (expecting `code`) and returns the run's folder.
fn drill(sb: &Sandbox, plan: &Path, code: i32) -> PathBuf {
    let out = sb.run([
        "-o".as_ref(),
        "json".as_ref(),
        "drill".as_ref(),
        plan.as_os_str(),
    ]);
    out.expect_code(code);
    let doc = out.json();
    let html = PathBuf::from(doc["files"]["html"].as_str().expect("files.html"));
    html.parent().expect("run folder").to_path_buf()
}

/// Asserts the page needs nothing from elsewhere: no scripts, no URLs but the
/// SVG namespace.
fn assert_self_contained(html: &str) {
    assert!(!html.contains("<script"), "the report has a script");
    assert!(!html.contains("<link"), "the report links a resource");
    assert!(!html.contains("src="), "the report loads a resource");
    let mut rest = html;
    while let Some(i) = rest.find("http") {
        assert!(
            rest[i..].starts_with("http://www.w3.org/2000/svg"),
            "the report refers to a URL: {}",
            &rest[i..(i + 60).min(rest.len())]
        );
        rest = &rest[i + 4..];
    }
    assert!(html.contains("<svg"), "no SVG timeline");
}

#[test]
fn drill_html_timeline_has_a_bar_per_step_in_chromium() {
    let Some(chromium) = rollback_core::testing::require_env("CHROMIUM_BIN") else {
        return;
    };
    let sb = Sandbox::new();
    let shots = KeepOnPanic::new();
    let step = sb.write("step.sh", "#!/bin/sh\nsleep 0.3\necho \"$1\" >> \"$2\"\n");
    let log = sb.file("steps.log");
    let exec = |id: &str| format!("[sh, {}, {id}, {}]", qp(&step), qp(&log));
    let plan = sb.write(
        "plan.yaml",
        &format!(
            "name: timeline\n\
             budget: 4s\n\
             steps:\n\
             \x20 - id: fetch-a\n    kind: exec\n    argv: {a}\n\
             \x20 - id: fetch-b\n    kind: exec\n    argv: {b}\n\
             \x20 - id: apply\n    kind: exec\n    after: [fetch-a, fetch-b]\n    argv: {c}\n",
            a = exec("fetch-a"),
            b = exec("fetch-b"),
            c = exec("apply"),
        ),
    );
    let dir = drill(&sb, &plan, 0);
    let log = std::fs::read_to_string(&log).expect("steps ran");
    assert_eq!(log.lines().last(), Some("apply"), "{log}");
    for name in ["drill.html", "drill.md", "drill.json"] {
        assert!(dir.join(name).is_file(), "no {name} in {}", dir.display());
    }
    let html_path = dir.join("drill.html");
    let html = std::fs::read_to_string(&html_path).expect("read drill.html");
    assert_self_contained(&html);
    let success = outcome_colour(Some(Outcome::Succeeded));
    assert_eq!(
        html.matches(&format!("fill=\"{success}\"")).count(),
        3,
        "{html}"
    );

    let png = shots.path().join("drill-pass.png");
    screenshot(&chromium, &html_path, &png, shots.path());
    println!("screenshot: {}", png.display());
    let shot = Shot::load(&png);
    assert_eq!((shot.width, shot.height), (1100, 1000));

    let bars = shot.bands(rgb(success), 3);
    println!("green bars: {bars:?}");
    assert_eq!(
        bars.len(),
        3,
        "expected one green bar per step, found {bars:?} in {}",
        png.display()
    );
    let (a, b, c) = (bars[0], bars[1], bars[2]);
    for bar in &bars {
        let (h, w) = (bar.bottom - bar.top + 1, bar.right - bar.left + 1);
        assert!(
            (10..=30).contains(&h) && w >= 10,
            "a bar of {w}x{h} px: {bars:?}"
        );
    }
    // Rows top to bottom in plan order, one per step.
    assert!(a.bottom < b.top && b.bottom < c.top, "{bars:?}");
    // fetch-a and fetch-b ran in parallel: their bars start together...
    assert!(
        a.left.abs_diff(b.left) <= 3,
        "parallel steps' bars start apart: {bars:?}"
    );
    // ...and apply, after both, starts to the right of both.
    assert!(
        c.left > a.left.max(b.left) + 10,
        "apply does not start after fetch-a and fetch-b: {bars:?}"
    );
    assert!(
        c.left + 3 >= a.right.min(b.right),
        "apply starts before its dependencies ended: {bars:?}"
    );
    // No failure colour on a passing drill.
    let failure = outcome_colour(Some(Outcome::Failed));
    assert!(shot.bands(rgb(failure), 3).is_empty(), "{}", png.display());
}

#[test]
fn drill_html_shows_a_failed_step_in_the_failure_colour() {
    let Some(chromium) = rollback_core::testing::require_env("CHROMIUM_BIN") else {
        return;
    };
    let sb = Sandbox::new();
    let shots = KeepOnPanic::new();
    let ok = sb.write("ok.sh", "#!/bin/sh\nsleep 0.2\n");
    let bad = sb.write(
        "bad.sh",
        "#!/bin/sh\nsleep 0.2\necho 'disk full' >&2\nexit 1\n",
    );
    let plan = sb.write(
        "plan.yaml",
        &format!(
            "name: timeline-failed\n\
             budget: 4s\n\
             steps:\n\
             \x20 - id: prepare\n    kind: exec\n    argv: [sh, {ok}]\n\
             \x20 - id: restore\n    kind: exec\n    after: [prepare]\n    argv: [sh, {bad}]\n\
             \x20 - id: reload\n    kind: exec\n    after: [restore]\n    argv: [sh, {ok}]\n",
            ok = qp(&ok),
            bad = qp(&bad),
        ),
    );
    let dir = drill(&sb, &plan, 1);
    let html_path = dir.join("drill.html");
    let html = std::fs::read_to_string(&html_path).expect("read drill.html");
    assert_self_contained(&html);
    assert!(
        html.contains("FAIL") && html.contains("disk full"),
        "{html}"
    );

    let png = shots.path().join("drill-fail.png");
    screenshot(&chromium, &html_path, &png, shots.path());
    println!("screenshot: {}", png.display());
    let shot = Shot::load(&png);
    let green = shot.bands(rgb(outcome_colour(Some(Outcome::Succeeded))), 3);
    let red = shot.bands(rgb(outcome_colour(Some(Outcome::Failed))), 3);
    println!("green bars: {green:?}; red bars: {red:?}");
    // prepare succeeded, restore failed, reload never ran (no bar).
    assert_eq!(green.len(), 1, "green bars: {green:?} ({})", png.display());
    assert_eq!(red.len(), 1, "red bars: {red:?} ({})", png.display());
    assert!(
        red[0].top > green[0].bottom && red[0].left > green[0].left,
        "the failed step's bar is not after prepare's: green {green:?} red {red:?}"
    );
}
