//! zrep wire protocol (sans-IO).
