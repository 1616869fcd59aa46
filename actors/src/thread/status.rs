//! Status derivation (spec section 3): status is computed from facts, never stored as truth.

use crate::model::{ActiveFlag, ThreadStatus};

/// The facts a thread's status is derived from.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StatusFacts {
    pub(crate) running: bool,
    pub(crate) approvals: usize,
    pub(crate) user_inputs: usize,
    pub(crate) system_error: bool,
}

impl StatusFacts {
    /// Whether the thread counts as active for the idle clock.
    pub(crate) fn active(self) -> bool {
        self.running || self.approvals > 0 || self.user_inputs > 0
    }

    /// The status clients see for a loaded thread.
    pub(crate) fn derive(self) -> ThreadStatus {
        if self.active() {
            let mut active_flags = Vec::new();
            if self.approvals > 0 {
                active_flags.push(ActiveFlag::WaitingOnApproval);
            }
            if self.user_inputs > 0 {
                active_flags.push(ActiveFlag::WaitingOnUserInput);
            }
            ThreadStatus::Active { active_flags }
        } else if self.system_error {
            ThreadStatus::SystemError
        } else {
            ThreadStatus::Idle
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approvals_come_before_user_input_in_the_active_flags() {
        let s = StatusFacts {
            approvals: 1,
            user_inputs: 2,
            ..Default::default()
        }
        .derive();
        assert_eq!(
            s,
            ThreadStatus::Active {
                active_flags: vec![
                    ActiveFlag::WaitingOnApproval,
                    ActiveFlag::WaitingOnUserInput
                ]
            }
        );
    }

    #[test]
    fn a_running_turn_hides_a_system_error() {
        let f = StatusFacts {
            running: true,
            system_error: true,
            ..Default::default()
        };
        assert_eq!(
            f.derive(),
            ThreadStatus::Active {
                active_flags: vec![]
            }
        );
        let f = StatusFacts {
            system_error: true,
            ..Default::default()
        };
        assert_eq!(f.derive(), ThreadStatus::SystemError);
        assert_eq!(StatusFacts::default().derive(), ThreadStatus::Idle);
    }
}
