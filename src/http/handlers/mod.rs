//! One module per kind of route. Each handler's doc comment names its scope; each only
//! translates HTTP to a call of the connection service and its result to a response.
pub mod ops;
pub mod refresh;
pub mod resource;
pub mod verify;

use super::RequestMeta;
use crate::auth::Principal;
use crate::connections::Initiator;

/// Who is making a change, and from where, as the audit trail records it.
fn initiator(principal: &Principal, meta: &RequestMeta) -> Initiator {
    Initiator {
        user_id: principal.user_id,
        client_id: principal.client_id,
        request_id: meta.request_id.clone(),
        remote_address: meta.remote_address.clone(),
    }
}
