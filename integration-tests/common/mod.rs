//! Shared test kit: certificates, the relay process, SMTP sinks, a DNS server.
#![allow(dead_code)]
