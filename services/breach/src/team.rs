//! AssignTeam: the response team of an open breach, replaced as a whole.

use custodia_core::{
    ApiError, auth::CallContext, fields::enum_value, idempotency::RequestKey, validate::MAX_ID,
};
use custodia_proto::breach::v1::{self as pb, TeamRole};

use crate::{
    api::{Api, and_entry, named_change},
    model, state,
    store::Write,
};

/// Most members of a team.
const MAX_MEMBERS: usize = 100;

/// Checks an AssignTeam: the breach's id.
pub(crate) fn validate_assign(r: &pb::AssignTeamRequest) -> Result<String, ApiError> {
    let (id, mut v) = named_change("name", &r.name, &r.request_id)?;
    if r.members.len() > MAX_MEMBERS {
        v.add("members", "has more than 100 entries");
    }
    for (i, m) in r.members.iter().enumerate().take(MAX_MEMBERS) {
        let f = |n: &str| format!("members[{i}].{n}");
        enum_value(
            &mut v,
            &f("role"),
            m.role,
            TeamRole::Unspecified,
            "DPO, IT, LEGAL, COMMUNICATIONS, MANAGEMENT, OTHER",
        );
        match &m.contact {
            None => v.add(f("contact"), "is required"),
            Some(c) => {
                if c.display_name.trim().is_empty() && c.email.trim().is_empty() {
                    v.add(f("contact.display_name"), "is required (or an email)");
                }
                model::validate_contact(&mut v, &f("contact"), c);
            }
        }
        v.max_len(&f("principal"), &m.principal, MAX_ID);
    }
    v.finish()?;
    Ok(id)
}

/// `ROLE: name` of each member, for the timeline.
fn summary(members: &[pb::TeamMember]) -> String {
    members
        .iter()
        .map(|m| {
            let c = m.contact.clone().unwrap_or_default();
            format!(
                "{}: {}",
                m.role().as_str_name().trim_start_matches("TEAM_ROLE_"),
                if c.display_name.is_empty() {
                    c.email
                } else {
                    c.display_name
                }
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl Api {
    /// AssignTeam.
    pub(crate) async fn assign(
        &self,
        call: &CallContext,
        r: pb::AssignTeamRequest,
    ) -> Result<pb::Breach, ApiError> {
        let key = RequestKey::of(call, "AssignTeam", &r.request_id, &r);
        let now = self.clock.now();
        let id = validate_assign(&r)?;
        let principal = call.principal.name().to_string();
        let summary = summary(&r.members);
        let members = r.members;
        self.change(call, "AssignTeam", &id, key.as_ref(), now, move |b| {
            state::require_open(b, "change its team")?;
            Ok(and_entry(
                Write::Team(members),
                now,
                &principal,
                format!("Response team set: {summary}"),
            ))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use custodia_proto::common::v1::Contact;

    use super::*;

    #[test]
    fn members_have_a_role_and_a_name_or_email() {
        let mut r = pb::AssignTeamRequest {
            name: "breaches/abc".into(),
            members: vec![pb::TeamMember {
                role: TeamRole::Dpo as i32,
                contact: Some(Contact::default()),
                ..Default::default()
            }],
            ..Default::default()
        };
        match validate_assign(&r) {
            Err(ApiError::InvalidArgument(list)) => {
                assert_eq!(list[0].field, "members[0].contact.display_name")
            }
            other => panic!("unexpected {other:?}"),
        }
        r.members[0].contact = Some(Contact {
            display_name: "Ada".into(),
            ..Default::default()
        });
        assert_eq!(validate_assign(&r).unwrap(), "abc");
        assert_eq!(summary(&r.members), "DPO: Ada");
    }
}
