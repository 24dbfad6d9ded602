//! zrep ZFS driver.
