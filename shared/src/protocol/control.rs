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
}

/// The fields of every [`Control`] message, as the body gives them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ControlFields {
    op: ControlOp,
    task: String,
    #[serde(default)]
    reason: Option<String>,
}

impl TryFrom<ControlFields> for Control {
    type Error = String;

    /// # Errors
    /// A field the message's `op` does not take.
    fn try_from(fields: ControlFields) -> Result<Self, String> {
        let ControlFields { op, task, reason } = fields;
        match (op, reason) {
            (ControlOp::Cancel, reason) => Ok(Self::Cancel { task, reason }),
            (ControlOp::Deadline, None) => Ok(Self::Deadline { task }),
            (ControlOp::Deadline, Some(_)) => {
                Err("unknown field `reason`: op `deadline` takes only `task`".into())
            }
        }
    }
}
