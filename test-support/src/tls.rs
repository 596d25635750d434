//! [`TestCertificates`]: a private CA made at test time with the `openssl` command, a server
//! certificate it signed for `127.0.0.1` and `localhost`, and a second CA that signed nothing
//! (the "wrong CA" a client must refuse). For the TLS tests of Redis, Sentinel, PostgreSQL and
//! the broker; nothing is checked in, and the keys live as long as the test's directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// PEM files in one directory.
#[derive(Debug, Clone)]
pub struct TestCertificates {
    /// The CA that signed [`Self::cert`].
    pub ca: PathBuf,
    /// The server certificate (SAN `IP:127.0.0.1`, `DNS:localhost`).
    pub cert: PathBuf,
    /// Its private key (PKCS#8, P-256).
    pub key: PathBuf,
    /// A CA of its own that signed nothing here: trusting only it must fail.
    pub wrong_ca: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running openssl (scripts/install-deps.sh installs it)")?;
    if !out.status.success() {
        bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

const EC: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
];

fn make_ca(dir: &Path, name: &str, subject: &str) -> Result<()> {
    let key = format!("{name}.key");
    let pem = format!("{name}.pem");
    let mut args = vec!["req", "-x509"];
    args.extend(EC);
    args.extend([
        "-keyout", &key, "-out", &pem, "-days", "2", "-subj", subject,
    ]);
    openssl(dir, &args)
}

impl TestCertificates {
    /// Makes the CAs and the server certificate in `dir` (created if needed).
    pub fn make(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        make_ca(dir, "ca", "/CN=switchboard test CA")?;
        make_ca(dir, "wrong-ca", "/CN=switchboard wrong CA")?;
        let mut csr = vec!["req"];
        csr.extend(EC);
        csr.extend([
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        openssl(dir, &csr)?;
        std::fs::write(
            dir.join("san.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth,clientAuth\n",
        )?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "san.ext",
            ],
        )?;
        Ok(TestCertificates {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            wrong_ca: dir.join("wrong-ca.pem"),
        })
    }
}
