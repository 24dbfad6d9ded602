//! zrep TLS and PKI.
