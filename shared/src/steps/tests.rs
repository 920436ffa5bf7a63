//! Tests of the steps module (real processes, a real HTTP server).
