//! The receiver's own resource counters (getrusage of RUSAGE_SELF): page faults and context
//! switches, read around a repetition to see what each message costs the kernel.

use std::ops::Sub;

/// Counters of this process since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Page faults served without I/O (a first touch of a shared page counts here).
    pub minor_faults: u64,
    /// Page faults that needed I/O.
    pub major_faults: u64,
    /// Times the process gave up the CPU itself: a sleeping futex wait is one.
    pub voluntary_switches: u64,
    /// Times the process was preempted.
    pub involuntary_switches: u64,
}

impl Usage {
    /// The counters now.
    pub fn now() -> Usage {
        // SAFETY: all-zero bytes are a valid `rusage` (integers and timevals only).
        let mut raw: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `raw` is a valid, writable rusage; RUSAGE_SELF is always a valid target.
        let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut raw) };
        assert_eq!(rc, 0, "getrusage(RUSAGE_SELF) failed");
        Usage {
            minor_faults: raw.ru_minflt as u64,
            major_faults: raw.ru_majflt as u64,
            voluntary_switches: raw.ru_nvcsw as u64,
            involuntary_switches: raw.ru_nivcsw as u64,
        }
    }

    /// The four counters as one line of text (the child reports it to the parent so).
    pub fn to_fields(self) -> String {
        format!(
            "{} {} {} {}",
            self.minor_faults,
            self.major_faults,
            self.voluntary_switches,
            self.involuntary_switches
        )
    }

    /// Parses what [`to_fields`](Self::to_fields) wrote.
    pub fn from_fields(fields: &[&str]) -> Option<Usage> {
        let [minor, major, voluntary, involuntary] = fields else {
            return None;
        };
        Some(Usage {
            minor_faults: minor.parse().ok()?,
            major_faults: major.parse().ok()?,
            voluntary_switches: voluntary.parse().ok()?,
            involuntary_switches: involuntary.parse().ok()?,
        })
    }

    /// The sum of two deltas.
    pub fn plus(self, other: Usage) -> Usage {
        Usage {
            minor_faults: self.minor_faults + other.minor_faults,
            major_faults: self.major_faults + other.major_faults,
            voluntary_switches: self.voluntary_switches + other.voluntary_switches,
            involuntary_switches: self.involuntary_switches + other.involuntary_switches,
        }
    }
}

impl Sub for Usage {
    type Output = Usage;
    /// The counts between two readings (`later - earlier`).
    fn sub(self, earlier: Usage) -> Usage {
        Usage {
            minor_faults: self.minor_faults.saturating_sub(earlier.minor_faults),
            major_faults: self.major_faults.saturating_sub(earlier.major_faults),
            voluntary_switches: self
                .voluntary_switches
                .saturating_sub(earlier.voluntary_switches),
            involuntary_switches: self
                .involuntary_switches
                .saturating_sub(earlier.involuntary_switches),
        }
    }
}
