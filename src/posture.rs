//! Production posture: `bpgate check` and `bpgate diag`. (Stub.)
