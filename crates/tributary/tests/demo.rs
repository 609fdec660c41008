//! `tributary demo`, as README's run command: a node, the processor and
//! simulated collectors in one go, every report processed.

use std::process::Command;

#[test]
fn demo_processes_every_report_and_says_where_to_look() {
    let dir = tempfile::tempdir().expect("dir");
    let out = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args([
            "demo",
            "--collectors",
            "3",
            "--reports",
            "15",
            "--exit-when-done",
            "--http",
            "127.0.0.1:0",
            "--dir",
        ])
        .arg(dir.path())
        .output()
        .expect("demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for n in 1..=3 {
        assert!(
            stdout.contains(&format!(
                "collector{n}: sent 15, accepted 15, processed 15, failed 0"
            )),
            "{stdout}"
        );
    }
    assert!(
        stdout.contains("reports stored by the processor: 45"),
        "{stdout}"
    );
    assert!(stdout.contains("/api/stats"), "{stdout}");
}
