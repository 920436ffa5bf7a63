//! How a [`Control`] message decodes: every field of every operation in one plain struct, then
//! the operation's own, so that the strict decoder reads the fields as they come.

use serde::Deserialize;

use super::Control;

/// The operations of [`Control`], by their `op` names.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ControlOp {
    Cancel,
    Deadline,
    Settle,
}

/// The fields of every [`Control`] message, as the body gives them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ControlFields {
    op: ControlOp,
    task: String,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    hops: Option<u32>,
}

impl TryFrom<ControlFields> for Control {
    type Error = String;

    /// # Errors
    /// A field the message's `op` does not take.
    fn try_from(fields: ControlFields) -> Result<Self, String> {
        let ControlFields {
            op,
            task,
            reason,
            hops,
        } = fields;
        match (op, reason, hops) {
            (ControlOp::Cancel, reason, None) => Ok(Self::Cancel { task, reason }),
            (ControlOp::Deadline, None, None) => Ok(Self::Deadline { task }),
            (ControlOp::Settle, None, hops) => Ok(Self::Settle {
                task,
                hops: hops.unwrap_or(0),
            }),
            (ControlOp::Cancel, _, Some(_)) => {
                Err("unknown field `hops`: op `cancel` takes `task` and `reason`".into())
            }
            (ControlOp::Deadline, Some(_), _) => {
                Err("unknown field `reason`: op `deadline` takes only `task`".into())
            }
            (ControlOp::Deadline, None, Some(_)) => {
                Err("unknown field `hops`: op `deadline` takes only `task`".into())
            }
            (ControlOp::Settle, Some(_), _) => {
                Err("unknown field `reason`: op `settle` takes `task` and `hops`".into())
            }
        }
    }
}
