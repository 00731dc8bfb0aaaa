//! Crash test: a child process applying acknowledged mutations is killed
//! with SIGKILL at random moments.
