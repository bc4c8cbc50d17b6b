//! With the `spdk` feature: compiles spdk/shim.c against the SPDK that pkg-config finds (an
//! SPDK installed with `make install`; PKG_CONFIG_PATH may point elsewhere) and links SPDK's
//! bdev layer, its bdev modules and DPDK. Without the feature: nothing.

use std::process::Command;

/// SPDK's pkg-config packages: the bdev layer and every bdev module (each registers itself in a
/// constructor, so none may be dropped as unused), the subsystem start-up, DPDK's env.
const PACKAGES: &[&str] = &[
    "spdk_bdev_modules",
    "spdk_event_bdev",
    "spdk_init",
    "spdk_env_dpdk",
    "spdk_syslibs",
];

fn pkg_config(flags: &[&str]) -> Vec<String> {
    let out = Command::new("pkg-config")
        .args(flags)
        .args(PACKAGES)
        .output()
        .unwrap_or_else(|e| panic!("the spdk feature needs pkg-config: {e}"));
    if !out.status.success() {
        panic!(
            "the spdk feature needs an installed SPDK (pkg-config {}: {}); see nvme/spdk/README.md",
            PACKAGES.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect()
}

fn main() {
    println!("cargo:rerun-if-changed=spdk/shim.c");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    if std::env::var_os("CARGO_FEATURE_SPDK").is_none() {
        return;
    }
    let mut cc = cc::Build::new();
    cc.file("spdk/shim.c").warnings(true);
    for f in pkg_config(&["--cflags"]) {
        if let Some(dir) = f.strip_prefix("-I") {
            cc.include(dir);
        } else {
            cc.flag(&f);
        }
    }
    cc.compile("keel_spdk_shim");
    // --static: the system libraries the archives need (libaio, libnuma, libbsd, ...).
    for f in pkg_config(&["--libs", "--static"]) {
        if let Some(dir) = f.strip_prefix("-L") {
            println!("cargo:rustc-link-search=native={dir}");
        } else if f == "-pthread" {
            println!("cargo:rustc-link-lib=dylib=pthread");
        } else if let Some(lib) = f.strip_prefix("-l") {
            if lib == "spdk_sock_uring" {
                // Sockets are for SPDK's network targets, which Keel never starts; this one
                // needs a newer liburing than Debian 12's.
                continue;
            }
            if lib.starts_with("spdk_") || lib.starts_with("rte_") {
                // Whole archives: the bdev modules, the subsystems and DPDK's drivers are
                // reached only through their constructors, which a plain link drops.
                println!("cargo:rustc-link-lib=static:+whole-archive,-bundle={lib}");
            } else {
                println!("cargo:rustc-link-lib=dylib={lib}");
            }
        }
    }
}
