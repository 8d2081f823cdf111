use chrono::{DateTime, Utc};
use uuid::Uuid;

/// The caller, as its token describes it.
#[derive(Clone, Debug)]
pub struct Principal {
    pub user_id: Uuid,
    pub client_id: Uuid,
    pub client_type: String,
    pub scopes: Vec<String>,
    pub expires_at: DateTime<Utc>,
}

impl Principal {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

/// The context rule of API.md: NHS and CABINET act on any client; every other type,
/// known or not, only on its own. Ids compare as UUIDs, so case does not matter; a path
/// id that is not a UUID is nobody's own id.
pub fn may_act_on(principal: &Principal, path_client_id: &str) -> bool {
    match principal.client_type.as_str() {
        "NHS" | "CABINET" => true,
        _ => Uuid::parse_str(path_client_id).is_ok_and(|id| id == principal.client_id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(client_type: &str, client_id: Uuid) -> Principal {
        Principal {
            user_id: Uuid::new_v4(),
            client_id,
            client_type: client_type.to_owned(),
            scopes: vec![],
            expires_at: Utc::now(),
        }
    }

    #[test]
    fn restricted_types_act_only_on_their_own_client() {
        let own = Uuid::new_v4();
        for client_type in [
            "MSP",
            "PHARMACY",
            "MSP_PHARMACY",
            "MIS",
            "MSP_LIMITED",
            "SOMETHING_NEW",
        ] {
            let p = principal(client_type, own);
            assert!(may_act_on(&p, &own.to_string()), "{client_type} own");
            assert!(
                may_act_on(&p, &own.to_string().to_uppercase()),
                "{client_type} upper"
            );
            assert!(
                !may_act_on(&p, &Uuid::new_v4().to_string()),
                "{client_type} other"
            );
            assert!(!may_act_on(&p, "not-a-uuid"), "{client_type} garbage");
        }
    }

    #[test]
    fn nhs_and_cabinet_act_on_any_client() {
        for client_type in ["NHS", "CABINET"] {
            let p = principal(client_type, Uuid::new_v4());
            assert!(may_act_on(&p, &Uuid::new_v4().to_string()));
        }
    }
}
