//! [`NetCut`]: a network partition on loopback between the processes of one Unix user and
//! chosen TCP ports, in both directions, made with iptables.
//!
//! Every process of the stack runs as root on 127.0.0.1, so addresses cannot tell one process
//! from another; a Unix user can. The process to cut off runs as a dedicated unprivileged
//! user ([`ensure_user`], then e.g. [`crate::Stack::start_socket_server_as`]), and:
//!
//! - while the [`NetCut`] lives, `mangle OUTPUT` marks (CONNMARK) every connection that user's
//!   processes take part in, from its first packet;
//! - during [`NetCut::cut`], `filter OUTPUT` DROPs every loopback packet of a marked connection
//!   to or from one of the cut ports. Both directions, established connections included: the
//!   process's requests and its peers' answers and pushes vanish, as in a real partition
//!   (nothing is refused, connections just hang). Its other traffic (clients, health probes,
//!   ports not listed) flows on.
//!
//! [`NetCut::heal`] (and drop) removes the rules. Each rule carries the comment
//! `switchboard-netcut-pid-<harness pid>`, so rules left behind by a harness that was killed
//! are removed by the next [`NetCut::prepare`].
//!
//! Needs root and `iptables` (nf_tables or legacy, with the owner, connmark, multiport and
//! comment matches): `scripts/install-deps.sh` installs it. [`NetCut::prepare`] fails with a
//! plain reason where this is not available, for tests to skip on.

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::process::RunAs;

/// The user whose processes tests cut off from the network.
pub const CUT_USER: &str = "sbcut";

/// The connection mark (value/mask) of the cut user's connections.
const MARK: &str = "0x5b0c0000/0xffff0000";
/// iptables' `multiport` takes at most 15 ports per rule.
const MULTIPORT_MAX: usize = 15;
const COMMENT_PREFIX: &str = "switchboard-netcut-pid-";

/// The uid and gid of `name`, creating it first (a system user with no home and no login
/// shell) if it does not exist. Creating needs root.
pub fn ensure_user(name: &str) -> Result<RunAs> {
    if lookup_user(name).is_err() {
        let out = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ])
            .output()
            .context("running useradd")?;
        // Another test may have created it meanwhile: look it up again either way.
        if !out.status.success() && lookup_user(name).is_err() {
            bail!(
                "useradd {name} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    lookup_user(name)
}

fn effective_uid() -> Result<u32> {
    let out = Command::new("id")
        .arg("-u")
        .output()
        .context("running id")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

fn lookup_user(name: &str) -> Result<RunAs> {
    let id = |flag: &str| -> Result<u32> {
        let out = Command::new("id")
            .args([flag, name])
            .output()
            .context("running id")?;
        if !out.status.success() {
            bail!("no user {name}");
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    };
    Ok(RunAs {
        uid: id("-u")?,
        gid: id("-g")?,
    })
}

/// One iptables rule: the table, the chain and the match/target arguments.
#[derive(Clone, Debug)]
struct Rule {
    table: &'static str,
    spec: Vec<String>,
}

/// The partition of one user's processes from chosen loopback ports; see the module docs.
/// Dropping it heals the cut and removes every rule it added.
#[derive(Debug)]
pub struct NetCut {
    user: RunAs,
    mark_rule: Rule,
    cut_rules: Vec<Rule>,
}

impl NetCut {
    /// Checks that rules can be added here (root, iptables and its matches) and starts
    /// marking the connections of `user`'s processes. Call it before starting them, so
    /// every connection they open is marked.
    pub fn prepare(user: RunAs) -> Result<NetCut> {
        let euid = effective_uid()?;
        if euid != 0 {
            bail!("packet filtering needs root (running as uid {euid})");
        }
        iptables(&["-V"])
            .context("iptables is not usable (scripts/install-deps.sh installs it)")?;
        remove_stale_rules();
        let mark_rule = Rule {
            table: "mangle",
            spec: strings(&[
                "OUTPUT",
                "-o",
                "lo",
                "-m",
                "owner",
                "--uid-owner",
                &user.uid.to_string(),
                "-m",
                "comment",
                "--comment",
                &comment(),
                "-j",
                "CONNMARK",
                "--set-xmark",
                MARK,
            ]),
        };
        insert(&mark_rule).context("adding the connection-marking rule")?;
        Ok(NetCut {
            user,
            mark_rule,
            cut_rules: Vec::new(),
        })
    }

    /// The user whose processes this cuts off.
    pub fn user(&self) -> RunAs {
        self.user
    }

    /// Starts dropping every packet between the user's processes and `ports` (TCP, loopback,
    /// both directions, established connections included). A no-op while already cut.
    pub fn cut(&mut self, ports: &[u16]) -> Result<()> {
        if !self.cut_rules.is_empty() {
            return Ok(());
        }
        for chunk in ports.chunks(MULTIPORT_MAX) {
            let list: Vec<String> = chunk.iter().map(u16::to_string).collect();
            let rule = Rule {
                table: "filter",
                spec: strings(&[
                    "OUTPUT",
                    "-o",
                    "lo",
                    "-p",
                    "tcp",
                    "-m",
                    "connmark",
                    "--mark",
                    MARK,
                    "-m",
                    "multiport",
                    "--ports",
                    &list.join(","),
                    "-m",
                    "comment",
                    "--comment",
                    &comment(),
                    "-j",
                    "DROP",
                ]),
            };
            if let Err(e) = insert(&rule) {
                self.heal();
                return Err(e.context("adding a DROP rule"));
            }
            self.cut_rules.push(rule);
        }
        Ok(())
    }

    /// Packets dropped so far by the current cut (0 when not cut).
    pub fn dropped_packets(&self) -> u64 {
        let Ok(listing) = iptables(&["-t", "filter", "-L", "OUTPUT", "-v", "-x", "-n"]) else {
            return 0;
        };
        listing
            .lines()
            .filter(|l| l.contains(&comment()) && l.contains("DROP"))
            .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }

    /// Ends the cut: removes the DROP rules (connections marked stay marked, which is
    /// harmless). Returns the packets they dropped.
    pub fn heal(&mut self) -> u64 {
        let dropped = self.dropped_packets();
        for rule in self.cut_rules.drain(..) {
            if let Err(e) = delete(&rule) {
                eprintln!("netcut: could not remove {rule:?}: {e:#}");
            }
        }
        dropped
    }
}

impl Drop for NetCut {
    fn drop(&mut self) {
        self.heal();
        if let Err(e) = delete(&self.mark_rule) {
            eprintln!("netcut: could not remove {:?}: {e:#}", self.mark_rule);
        }
    }
}

fn comment() -> String {
    format!("{COMMENT_PREFIX}{}", std::process::id())
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

fn insert(rule: &Rule) -> Result<()> {
    let mut args = vec!["-t".to_owned(), rule.table.to_owned(), "-I".to_owned()];
    args.extend(rule.spec.iter().cloned());
    iptables(&args).map(drop)
}

fn delete(rule: &Rule) -> Result<()> {
    let mut args = vec!["-t".to_owned(), rule.table.to_owned(), "-D".to_owned()];
    args.extend(rule.spec.iter().cloned());
    iptables(&args).map(drop)
}

/// Removes the rules of harnesses that no longer run (killed before they could clean up).
fn remove_stale_rules() {
    for table in ["mangle", "filter"] {
        let Ok(listing) = iptables(&["-t", table, "-S", "OUTPUT"]) else {
            continue;
        };
        for line in listing.lines() {
            let Some(pid) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix(COMMENT_PREFIX))
            else {
                continue;
            };
            if std::path::Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            // `-A OUTPUT ...` as listed; the same words after `-D` delete it. Our rules hold
            // no quoted words.
            let mut words = line.split_whitespace();
            if words.next() != Some("-A") {
                continue;
            }
            let mut args = vec!["-t", table, "-D"];
            args.extend(words);
            match iptables(&args) {
                Ok(_) => eprintln!("netcut: removed a stale rule: {line}"),
                Err(e) => eprintln!("netcut: could not remove a stale rule {line}: {e:#}"),
            }
        }
    }
}

/// Runs `iptables -w 5 ARGS`, returning its stdout, or an error with its stderr.
fn iptables<S: AsRef<str>>(args: &[S]) -> Result<String> {
    let mut cmd = Command::new("iptables");
    cmd.args(["-w", "5"]);
    cmd.args(args.iter().map(AsRef::as_ref));
    let out = cmd.output().context("running iptables")?;
    if !out.status.success() {
        bail!(
            "iptables {} failed ({}): {}",
            args.iter().map(AsRef::as_ref).collect::<Vec<_>>().join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
