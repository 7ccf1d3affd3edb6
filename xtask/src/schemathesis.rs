//! `cargo xtask schemathesis [--examples N] [--seed N]`: schemathesis (from PyPI, in a venv
//! under the target folder) against a real `sd serve`'s `/openapi.json`, on the CPU backend.
//! Every operation gets `--examples` generated requests (positive and negative), then the
//! stateful phase follows the documented links. It fails on any 5xx, any answer that breaks
//! its documented schema, status code, content type or headers, and any invalid request that
//! is accepted.
//!
//! Two checks are left out, each because the API means it:
//! - `positive_data_acceptance`: the request schemas cannot say the rules across fields
//!   (`mask` needs `initImage`, an image must decode, `image` is only for `ImageTransform`),
//!   so a schema-valid request may still be refused, with a typed 400 naming the field;
//! - `use_after_free`: `DELETE` cancels a job, which stays readable (as `cancelled`) until its
//!   result expires, as the clients of these APIs expect.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

use crate::{stage, target_dir};

/// The examples per operation in `cargo xtask test` (about 20 s on 2 cores).
pub const CI_EXAMPLES: u32 = 20;

/// `cargo xtask schemathesis [--examples N] [--seed N]`: builds `sd`, then [`run`].
pub fn command(sh: &Shell, root: &Path, args: &[&str]) -> Result<()> {
    let (mut examples, mut seed) = (CI_EXAMPLES, 1u64);
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let value = rest
            .next()
            .with_context(|| format!("{arg} needs a value"))?;
        match *arg {
            "--examples" => examples = value.parse().context("--examples: a count")?,
            "--seed" => seed = value.parse().context("--seed: a number")?,
            other => bail!("unknown option {other}; the options are --examples N, --seed N"),
        }
    }
    stage("build sd", || {
        Ok(cmd!(sh, "cargo build --quiet -p sd-cli").run()?)
    })?;
    run(sh, root, &target_dir(root).join("debug/sd"), examples, seed)
}

/// Runs schemathesis against `sd serve` started from the binary `sd`.
pub fn run(sh: &Shell, root: &Path, sd: &Path, examples: u32, seed: u64) -> Result<()> {
    let venv = target_dir(root).join("venv-schemathesis");
    let schemathesis = venv.join("bin/schemathesis");
    stage("schemathesis: install", || {
        if schemathesis.is_file() {
            println!("present: {}", schemathesis.display());
            return Ok(());
        }
        let requirements = root.join("tests/schemathesis/requirements.txt");
        cmd!(sh, "python3 -m venv {venv}").run()?;
        cmd!(sh, "{venv}/bin/pip install --quiet -r {requirements}").run()?;
        Ok(())
    })?;
    stage("schemathesis against sd serve's /openapi.json", || {
        // A queue that never fills (a full one is a documented 503, which the checks count as
        // a server error) and jobs cut short: the fuzzer's requests are about the HTTP side.
        let mut server = Command::new(sd)
            .args(["serve", "--device", "cpu", "--port", "0"])
            .args(["--queue-size", "100000", "--job-timeout", "5"])
            .env_remove("SD_API_KEY")
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", sd.display()))?;
        let stderr = server.stderr.take().context("the server's stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let mut base = None;
        for line in lines.by_ref() {
            let line = line?;
            eprintln!("[sd serve] {line}");
            if let Some(rest) = line.strip_prefix("listening on ") {
                base = rest.split_whitespace().next().map(str::to_owned);
                break;
            }
        }
        // Keep reading what it says, so that it never blocks on a full pipe.
        let echo = std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                eprintln!("[sd serve] {line}");
            }
        });
        let outcome = match base {
            None => Err(anyhow::anyhow!("sd serve did not start")),
            Some(base) => {
                let (examples, seed) = (examples.to_string(), seed.to_string());
                let schema = format!("{base}/openapi.json");
                cmd!(
                    sh,
                    "{schemathesis} run {schema} --checks all
                     --exclude-checks positive_data_acceptance,use_after_free
                     --max-examples {examples} --seed {seed} --workers 1 --no-color"
                )
                .run()
                .map_err(anyhow::Error::from)
            }
        };
        let crashed = server.try_wait()?;
        let _ = server.kill();
        let _ = server.wait();
        let _ = echo.join();
        if let Some(status) = crashed {
            bail!("sd serve exited during the run: {status}");
        }
        outcome
    })
}
