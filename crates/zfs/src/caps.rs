//! The ZFS dialect and what it can do, probed at run time.
//!
//! zfs-fuse 0.7 and OpenZFS 2.x share most commands but differ in flags. The driver never guesses
//! from a platform name: it reads `zfs`'s own usage text (which lists every subcommand with its
//! flags), its property list and, where present, `zfs version`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Which ZFS implementation answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Dialect {
    /// OpenZFS (ZFS on Linux, FreeBSD), with its version string such as `2.3.2`.
    OpenZfs {
        /// The userland version, without the `zfs-` prefix.
        version: String,
    },
    /// zfs-fuse or another old implementation without `zfs version`.
    Legacy,
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OpenZfs { version } => write!(f, "OpenZFS {version}"),
            Self::Legacy => f.write_str("legacy ZFS (zfs-fuse)"),
        }
    }
}

impl Dialect {
    /// The implementation's name and version as announced to a peer (`openzfs`, `2.3.2-1`).
    /// zfs-fuse has no `zfs version`; 0.7 is its last release and the one zrep is tested on.
    pub fn implementation(&self) -> (&'static str, &str) {
        match self {
            Self::OpenZfs { version } => ("openzfs", version),
            Self::Legacy => ("zfs-fuse", "0.7"),
        }
    }
}

/// What the local `zfs` supports beyond the common core.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(clippy::struct_excessive_bools)]
pub struct Capabilities {
    /// The implementation that answered the probe.
    pub dialect: Dialect,
    /// `zfs list -p` (exact numbers).
    pub list_parsable: bool,
    /// `zfs bookmark` and bookmarks as incremental sources; only together with `createtxg`,
    /// which places a bookmark among the snapshots (see [`Capabilities::with_createtxg`]).
    pub bookmarks: bool,
    /// `zfs receive -s`, `receive_resume_token`, `zfs send -t`, `zfs receive -A`.
    pub resumable_receive: bool,
    /// `zfs receive -u` (do not mount).
    pub receive_no_mount: bool,
    /// `zfs receive -o property=value`.
    pub receive_set_property: bool,
    /// `zfs receive -x property`.
    pub receive_exclude_property: bool,
    /// `zfs send -w` (raw, for encrypted datasets).
    pub raw_send: bool,
    /// `zfs send -c`, `-L`, `-e` (compressed, large and embedded blocks).
    pub compressed_send: bool,
    /// `zfs send -nP` size estimates.
    pub send_estimate: bool,
    /// The `createtxg` property.
    pub createtxg: bool,
    /// `zfs holds -H`.
    pub holds_scriptable: bool,
}

impl Capabilities {
    /// Derives capabilities from `zfs` usage text, the property list, and `zfs version` output
    /// (empty when the command does not exist): what the texts show, before
    /// [`Capabilities::with_createtxg`] settles `createtxg` and what depends on it.
    pub fn from_probe(usage: &str, properties: &str, version_output: &str) -> Self {
        let dialect = parse_version(version_output)
            .map(|version| Dialect::OpenZfs { version })
            .unwrap_or(Dialect::Legacy);
        let receive = usage_flags(usage, "receive");
        let send = usage_flags(usage, "send");
        let list = usage_flags(usage, "list");
        let holds = usage_flags(usage, "holds");
        let receive_lines = usage_lines(usage, "receive").collect::<Vec<_>>().join(" ");
        let send_lines = usage_lines(usage, "send").collect::<Vec<_>>().join(" ");
        Self {
            dialect,
            list_parsable: list.contains('p'),
            bookmarks: usage_lines(usage, "bookmark").next().is_some(),
            resumable_receive: receive.contains('s')
                && send_lines.contains("-t")
                && receive_lines.contains("-A"),
            receive_no_mount: receive.contains('u'),
            receive_set_property: receive_lines.contains("-o "),
            receive_exclude_property: receive_lines.contains("-x "),
            raw_send: send.contains('w'),
            compressed_send: send.contains('c') && send.contains('L') && send.contains('e'),
            send_estimate: send.contains('n') && send.contains('P'),
            createtxg: property_listed(properties, "createtxg"),
            holds_scriptable: holds.contains('H'),
        }
    }

    /// These capabilities with `createtxg` as finally found (listed, or answered where hidden,
    /// as [`crate::SystemZfs::probe`] asks). Without
    /// it bookmarks are off: the snapshot order would be list positions, among which a bookmark
    /// has no place, and a bookmark base out of order could pick an older base than the newest.
    #[must_use]
    pub fn with_createtxg(mut self, createtxg: bool) -> Self {
        self.createtxg = createtxg;
        self.bookmarks &= createtxg;
        self
    }

    /// The capabilities of a plain zfs-fuse 0.7, for fakes and tests.
    pub fn legacy() -> Self {
        Self {
            dialect: Dialect::Legacy,
            list_parsable: false,
            bookmarks: false,
            resumable_receive: false,
            receive_no_mount: false,
            receive_set_property: false,
            receive_exclude_property: false,
            raw_send: false,
            compressed_send: false,
            send_estimate: false,
            createtxg: true,
            holds_scriptable: false,
        }
    }

    /// The capabilities of OpenZFS 2.x, for fakes and tests.
    pub fn openzfs(version: &str) -> Self {
        Self {
            dialect: Dialect::OpenZfs {
                version: version.to_owned(),
            },
            list_parsable: true,
            bookmarks: true,
            resumable_receive: true,
            receive_no_mount: true,
            receive_set_property: true,
            receive_exclude_property: true,
            raw_send: true,
            compressed_send: true,
            send_estimate: true,
            createtxg: true,
            holds_scriptable: true,
        }
    }
}

/// `zfs-2.3.2-1` (first line of `zfs version`) → `2.3.2-1`.
fn parse_version(output: &str) -> Option<String> {
    let first = output.lines().next()?.trim();
    let version = first.strip_prefix("zfs-")?;
    version
        .starts_with(|c: char| c.is_ascii_digit())
        .then(|| version.to_owned())
}

/// The usage lines of one subcommand (`\tsend [-DnPpRv] ...`).
fn usage_lines<'a>(usage: &'a str, command: &'a str) -> impl Iterator<Item = &'a str> {
    usage.lines().map(str::trim_start).filter(move |line| {
        line.strip_prefix(command)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(' '))
    })
}

/// All single-letter flags in bracketed groups (`[-vnF]`) of a subcommand's usage lines.
fn usage_flags(usage: &str, command: &str) -> String {
    let mut flags = String::new();
    for line in usage_lines(usage, command) {
        for group in line.split('[').skip(1) {
            if let Some(letters) = group.strip_prefix('-') {
                flags.extend(letters.chars().take_while(char::is_ascii_alphabetic));
            }
        }
    }
    flags
}

/// Whether `zfs get`'s property table lists a property. Some hidden properties (zfs-fuse's
/// `createtxg`) work without being listed; the driver probes those separately.
fn property_listed(properties: &str, name: &str) -> bool {
    properties
        .lines()
        .any(|line| line.split_whitespace().next() == Some(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZFS_FUSE_USAGE: &str = "usage: zfs command args ...\n\
        \tlist [-rH][-d max] [-o property[,...]] [-t type[,...]] [-s property] ...\n\
        \tsend [-RDp] [-[iI] snapshot] <snapshot>\n\
        \treceive [-vnF] <filesystem|volume|snapshot>\n\
        \treceive [-vnF] -d <filesystem>\n\
        \thold [-r] <tag> <snapshot> ...\n\
        \tholds [-r] <snapshot> ...\n";

    const OPENZFS_USAGE: &str = "usage: zfs command args ...\n\
        \tlist [-Hp] [-r|-d max] [-o property[,...]] [-s property]...\n\
        \tbookmark <snapshot|bookmark> <newbookmark>\n\
        \tsend [-DLPbcehnpsVvw] [-i|-I snapshot]\n\
        \t     [-R [-X dataset[,dataset]...]]     <snapshot>\n\
        \tsend [-DnVvPLecw] [-i snapshot|bookmark] <filesystem|volume|snapshot>\n\
        \tsend [-DnPpVvLec] [-i bookmark|snapshot] --redact <bookmark> <snapshot>\n\
        \tsend [-nVvPe] -t <receive_resume_token>\n\
        \tsend [-PnVv] --saved filesystem\n\
        \treceive [-vMnsFhu] [-o <property>=<value>] ... [-x <property>] ...\n\
        \t    <filesystem|volume|snapshot>\n\
        \treceive [-vMnsFhu] [-o <property>=<value>] ... [-x <property>] ... \n\
        \t    [-d | -e] <filesystem>\n\
        \treceive -A <filesystem|volume>\n\
        \tholds [-rHp] <snapshot> ...\n";

    #[test]
    fn zfs_fuse_usage_is_legacy() {
        let caps = Capabilities::from_probe(ZFS_FUSE_USAGE, "\tcreation  NO NO <date>\n", "");
        assert_eq!(caps.dialect, Dialect::Legacy);
        assert!(!caps.list_parsable);
        assert!(!caps.bookmarks);
        assert!(!caps.resumable_receive);
        assert!(!caps.receive_no_mount);
        assert!(!caps.raw_send);
        assert!(!caps.holds_scriptable);
        assert!(!caps.createtxg);
    }

    #[test]
    fn openzfs_usage_has_everything() {
        let props = "\tcreatetxg  NO NO <uint64>\n\treceive_resume_token NO NO <string token>\n";
        let caps =
            Capabilities::from_probe(OPENZFS_USAGE, props, "zfs-2.3.2-1\nzfs-kmod-2.3.2-1\n");
        assert_eq!(
            caps,
            Capabilities {
                dialect: Dialect::OpenZfs {
                    version: "2.3.2-1".into()
                },
                ..Capabilities::openzfs("2.3.2-1")
            }
        );
    }

    /// What `zfs`, `zfs get` and `zfs version` print (usage and property list on stderr), as
    /// recorded in the OpenZFS VM of the OpenZFS tier.
    macro_rules! recorded_probe {
        ($version:literal) => {
            Capabilities::from_probe(
                include_str!(concat!("../testdata/openzfs-", $version, "-usage.txt")),
                include_str!(concat!("../testdata/openzfs-", $version, "-get.txt")),
                include_str!(concat!("../testdata/openzfs-", $version, "-version.txt")),
            )
        };
    }

    #[test]
    fn real_openzfs_probe_output() {
        // Debian bookworm-backports and bookworm: what production hosts run, 2.1 to 2.3.
        assert_eq!(
            recorded_probe!("2.3.2"),
            Capabilities::openzfs("2.3.2-2~bpo12+2")
        );
        assert_eq!(
            recorded_probe!("2.1.11"),
            Capabilities::openzfs("2.1.11-1+deb12u1")
        );
    }

    #[test]
    fn bookmarks_need_createtxg() {
        let caps = Capabilities::from_probe(OPENZFS_USAGE, "\tguid  NO NO <uint64>\n", "");
        assert!(!caps.createtxg && caps.bookmarks);
        assert!(caps.clone().with_createtxg(true).bookmarks);
        assert!(!caps.with_createtxg(false).bookmarks);
    }

    #[test]
    fn implementation_names() {
        assert_eq!(
            Dialect::OpenZfs {
                version: "2.3.2-1".into()
            }
            .implementation(),
            ("openzfs", "2.3.2-1")
        );
        assert_eq!(Dialect::Legacy.implementation(), ("zfs-fuse", "0.7"));
    }

    #[test]
    fn version_parsing() {
        assert_eq!(parse_version("zfs-2.1.11-1\n"), Some("2.1.11-1".into()));
        assert_eq!(parse_version("unrecognized command 'version'"), None);
        assert_eq!(parse_version(""), None);
    }
}
