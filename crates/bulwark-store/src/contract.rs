//! The contract every backend must pass. Backends run it with [`crate::store_contract_tests!`],
//! which turns each function below into a named `#[tokio::test]` against a fresh store.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test suite"
)]

use crate::*;
use bulwark_core::account::{DisplayName, Email, GroupName, Login};
use bulwark_core::api_key::{ApiKey, KeyName, Scopes};
use bulwark_core::password::hash::PasswordHash;
use bulwark_core::token::TokenHash;
use std::collections::BTreeMap;

/// Generates one test per contract function. `$make` is an expression that evaluates to a
/// future yielding a fresh, migrated store.
#[macro_export]
macro_rules! store_contract_tests {
    ($make:expr) => {
        $crate::store_contract_tests!(@each $make;
            insert_and_get_user, login_is_unique_case_insensitively, missing_user_is_not_found,
            find_users_by_email_ignores_case, list_users_filters_and_pages, count_active_in_group_counts_active_members,
            update_profile_active_and_groups, delete_user_removes_sessions_and_tokens,
            password_update_keeps_bounded_history, rehash_replaces_current_hash_only, a_cleared_password_no_longer_exists,
            must_change_and_last_login_are_recorded, login_candidate_holds_the_user_hash_and_factor,
            sessions_insert_find_touch_delete, delete_user_sessions_keeps_one, expired_sessions_are_pruned,
            one_time_token_is_consumed_once, one_time_token_expires_and_purpose_matters, revoking_user_tokens_voids_them,
            concurrent_consumption_succeeds_once,
            throttle_counts_failures_and_restarts_after_window, throttle_block_never_shortens,
            throttles_are_read_together_in_order, concurrent_failures_are_all_counted,
            audit_is_appended_and_filtered, audit_events_form_a_hash_chain, concurrent_audit_appends_stay_one_chain,
            audit_search_by_time_and_page, audit_pruning_leaves_a_checkpoint_the_chain_starts_from,
            recent_login_clients_are_distinct_and_recent, mail_queue_retries_and_deletes, ping_and_migrate_are_idempotent,
            session_stage_is_stored, device_account_and_grace_are_recorded,
            pending_totp_is_replaced_until_confirmed, totp_step_only_moves_forward, concurrent_totp_use_succeeds_once,
            totp_secret_rotation_checks_the_old_key, recovery_codes_work_once_and_are_replaced,
            concurrent_recovery_code_use_succeeds_once, user_security_lists_second_factors_page_by_page,
            user_security_follows_every_change,
            audit_events_are_counted_by_kind_since_a_time, admin_user_list_filters_and_pages_by_login,
            session_password_check_time_is_recorded, email_codes_are_single_use_and_expire,
            trusted_devices_are_listed_touched_and_revoked, second_factors_go_with_the_user,
            api_keys_are_found_by_digest_and_listed, api_key_names_are_unique_among_live_keys,
            api_keys_are_revoked_once, api_key_last_use_moves_forward_in_bulk,
            api_keys_go_with_the_user, settings_are_seeded_once, settings_change_all_or_nothing_by_compare_and_set,
            concurrent_settings_changes_succeed_once);
    };
    (@each $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let store = $make.await;
                $crate::contract::$name(&store).await;
            }
        )*
    };
}

const T0: i64 = 1_700_000_000;

fn hash(n: u32) -> PasswordHash {
    // A syntactically valid PHC string; the store never interprets it.
    PasswordHash::parse(&format!(
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0{n:04}$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g"
    ))
    .expect("test hash parses")
}

fn new_user(login: &str) -> NewUser {
    NewUser {
        login: Login::parse(login).unwrap(),
        email: Some(Email::parse(&format!("{}@example.com", login.to_lowercase())).unwrap()),
        display_name: DisplayName::parse("Test User").unwrap(),
        groups: vec![GroupName::parse("internal").unwrap()],
        password_hash: Some(hash(1)),
        must_change_password: false,
        created_at: T0,
    }
}

fn group(name: &str) -> GroupName {
    GroupName::parse(name).unwrap()
}

async fn session(s: &dyn Store, user: UserId, token: &str, at: i64) -> SessionRecord {
    s.insert_session(&NewSession {
        token_hash: TokenHash::of(token),
        user,
        stage: SessionStage::Full,
        two_factor: false,
        created_at: at,
        ip: Some("192.0.2.1".into()),
        user_agent: Some("test-agent".into()),
    })
    .await
    .unwrap()
}

pub async fn insert_and_get_user(s: &dyn Store) {
    let u = s.insert_user(&new_user("alice")).await.unwrap();
    assert_eq!(u.login, "alice");
    assert_eq!(u.email.as_deref(), Some("alice@example.com"));
    assert_eq!(u.display_name, "Test User");
    assert!(u.active);
    assert_eq!(u.groups, vec!["internal".to_string()]);
    assert_eq!(u.created_at, T0);
    assert_eq!(u.password_changed_at, Some(T0));
    assert!(u.has_password);
    assert_eq!(s.get_user(u.id).await.unwrap(), u);
    let found = s
        .find_user_by_login(&Login::parse("ALICE").unwrap())
        .await
        .unwrap();
    assert_eq!(found, Some(u.clone()));
    assert_eq!(
        s.find_password_hash(u.id).await.unwrap().unwrap().as_str(),
        hash(1).as_str()
    );

    let mut invited = new_user("bob");
    invited.password_hash = None;
    let b = s.insert_user(&invited).await.unwrap();
    assert!(!b.has_password);
    assert_eq!(b.password_changed_at, None);
    assert!(s.find_password_hash(b.id).await.unwrap().is_none());
}

pub async fn login_is_unique_case_insensitively(s: &dyn Store) {
    s.insert_user(&new_user("carol")).await.unwrap();
    let err = s.insert_user(&new_user("Carol")).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
}

pub async fn missing_user_is_not_found(s: &dyn Store) {
    assert!(matches!(s.get_user(4242).await, Err(StoreError::NotFound)));
    assert!(matches!(
        s.delete_user(4242).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.update_active(4242, false).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.update_groups(4242, &[]).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.update_profile(4242, None, "x").await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.update_must_change_password(4242, true).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.rehash_password(4242, &hash(2)).await,
        Err(StoreError::NotFound)
    ));
    let change = PasswordChange {
        user: 4242,
        hash: hash(2),
        changed_at: T0,
        must_change: false,
        keep_history: 3,
    };
    assert!(matches!(
        s.update_password(&change).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        s.find_user_by_login(&Login::parse("nobody").unwrap())
            .await
            .unwrap(),
        None
    );
}

pub async fn find_users_by_email_ignores_case(s: &dyn Store) {
    let u = s.insert_user(&new_user("dave")).await.unwrap();
    let found = s
        .find_users_by_email(&Email::parse("DAVE@Example.com").unwrap())
        .await
        .unwrap();
    assert_eq!(found.iter().map(|u| u.id).collect::<Vec<_>>(), vec![u.id]);
    assert!(s
        .find_users_by_email(&Email::parse("x@example.com").unwrap())
        .await
        .unwrap()
        .is_empty());
}

pub async fn list_users_filters_and_pages(s: &dyn Store) {
    for login in ["u3", "u1", "u2", "admin1"] {
        let mut nu = new_user(login);
        if login == "admin1" {
            nu.groups = vec![group("admins")];
        }
        s.insert_user(&nu).await.unwrap();
    }
    let all = s
        .list_users(&UserFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let logins: Vec<_> = all.iter().map(|u| u.login.as_str()).collect();
    assert_eq!(logins, ["admin1", "u1", "u2", "u3"]);
    let page = s
        .list_users(&UserFilter {
            limit: 2,
            offset: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|u| u.login.as_str()).collect::<Vec<_>>(),
        ["u1", "u2"]
    );
    let search = s
        .list_users(&UserFilter {
            search: Some("U2".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(search.len(), 1);
    // LIKE wildcards in the search are literal.
    let wild = s
        .list_users(&UserFilter {
            search: Some("%".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(wild.is_empty());
    let admins = s
        .list_users(&UserFilter {
            group: Some("admins".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(admins.len(), 1);
    assert_eq!(admins[0].login, "admin1");
}

pub async fn count_active_in_group_counts_active_members(s: &dyn Store) {
    let admins = group("admins");
    assert_eq!(s.count_active_in_group(&admins).await.unwrap(), 0);
    let mut a = new_user("root");
    a.groups = vec![admins.clone(), group("internal")];
    let a = s.insert_user(&a).await.unwrap();
    assert_eq!(s.count_active_in_group(&admins).await.unwrap(), 1);
    s.update_active(a.id, false).await.unwrap();
    assert_eq!(s.count_active_in_group(&admins).await.unwrap(), 0);
}

pub async fn update_profile_active_and_groups(s: &dyn Store) {
    let u = s.insert_user(&new_user("erin")).await.unwrap();
    s.update_profile(
        u.id,
        Some(&Email::parse("erin@corp.example").unwrap()),
        "Erin E.",
    )
    .await
    .unwrap();
    s.update_active(u.id, false).await.unwrap();
    s.update_groups(u.id, &[group("portal"), group("admins")])
        .await
        .unwrap();
    let got = s.get_user(u.id).await.unwrap();
    assert_eq!(got.email.as_deref(), Some("erin@corp.example"));
    assert_eq!(got.display_name, "Erin E.");
    assert!(!got.active);
    assert_eq!(got.groups, vec!["admins".to_string(), "portal".to_string()]);
    s.update_profile(u.id, None, "").await.unwrap();
    assert_eq!(s.get_user(u.id).await.unwrap().email, None);
}

pub async fn delete_user_removes_sessions_and_tokens(s: &dyn Store) {
    let u = s.insert_user(&new_user("frank")).await.unwrap();
    session(s, u.id, "tok-frank", T0).await;
    let th = TokenHash::of("reset-frank");
    s.insert_one_time_token(&NewOneTimeToken {
        hash: th.clone(),
        purpose: TokenPurpose::PasswordReset,
        user: Some(u.id),
        created_at: T0,
        expires_at: T0 + 60,
    })
    .await
    .unwrap();
    s.delete_user(u.id).await.unwrap();
    assert!(matches!(s.get_user(u.id).await, Err(StoreError::NotFound)));
    assert_eq!(
        s.find_session(&TokenHash::of("tok-frank")).await.unwrap(),
        None
    );
    assert_eq!(
        s.find_one_time_token(TokenPurpose::PasswordReset, &th, T0)
            .await
            .unwrap(),
        None
    );
    // The login is free again.
    s.insert_user(&new_user("frank")).await.unwrap();
}

pub async fn password_update_keeps_bounded_history(s: &dyn Store) {
    let u = s.insert_user(&new_user("gina")).await.unwrap();
    for n in 2..=5 {
        let change = PasswordChange {
            user: u.id,
            hash: hash(n),
            changed_at: T0 + i64::from(n),
            must_change: n == 5,
            keep_history: 3,
        };
        s.update_password(&change).await.unwrap();
    }
    let got = s.get_user(u.id).await.unwrap();
    assert_eq!(got.password_changed_at, Some(T0 + 5));
    assert!(got.must_change_password);
    assert_eq!(
        s.find_password_hash(u.id).await.unwrap().unwrap().as_str(),
        hash(5).as_str()
    );
    let history: Vec<String> = s
        .list_password_history(u.id, 10)
        .await
        .unwrap()
        .iter()
        .map(|h| h.as_str().to_string())
        .collect();
    assert_eq!(
        history,
        [hash(5), hash(4), hash(3)]
            .iter()
            .map(|h| h.as_str().to_string())
            .collect::<Vec<_>>()
    );
    assert_eq!(s.list_password_history(u.id, 1).await.unwrap().len(), 1);
    // keep_history 0 still keeps the current password.
    let change = PasswordChange {
        user: u.id,
        hash: hash(6),
        changed_at: T0 + 6,
        must_change: false,
        keep_history: 0,
    };
    s.update_password(&change).await.unwrap();
    assert_eq!(s.list_password_history(u.id, 10).await.unwrap().len(), 1);
}

pub async fn login_candidate_holds_the_user_hash_and_factor(s: &dyn Store) {
    let u = s.insert_user(&new_user("lena")).await.unwrap();
    let login = Login::parse("Lena").unwrap();
    let c = s.find_login_candidate(&login).await.unwrap().unwrap();
    assert_eq!(
        c.user,
        s.find_user_by_login(&login).await.unwrap().unwrap(),
        "the user as find_user_by_login reads them"
    );
    assert_eq!(c.user.id, u.id);
    assert_eq!(
        c.password_hash.as_ref().map(PasswordHash::as_str),
        Some(hash(1).as_str())
    );
    assert!(!c.totp_confirmed);
    assert!(s
        .find_login_candidate(&Login::parse("nobody").unwrap())
        .await
        .unwrap()
        .is_none());

    // Only a confirmed authenticator counts.
    s.upsert_pending_totp(&factor(u.id, "sealed"))
        .await
        .unwrap();
    let c = s.find_login_candidate(&login).await.unwrap().unwrap();
    assert!(!c.totp_confirmed, "pending");
    assert!(s.confirm_totp(u.id, T0 + 5, 100).await.unwrap());
    let c = s.find_login_candidate(&login).await.unwrap().unwrap();
    assert!(c.totp_confirmed, "confirmed");
    assert!(s.delete_totp(u.id).await.unwrap());
    let c = s.find_login_candidate(&login).await.unwrap().unwrap();
    assert!(!c.totp_confirmed, "removed");

    s.clear_password(u.id).await.unwrap();
    let c = s.find_login_candidate(&login).await.unwrap().unwrap();
    assert!(c.password_hash.is_none());
    assert!(!c.user.has_password);
}

pub async fn a_cleared_password_no_longer_exists(s: &dyn Store) {
    let u = s.insert_user(&new_user("cleo")).await.unwrap();
    assert!(u.has_password);
    s.clear_password(u.id).await.unwrap();
    let after = s.get_user(u.id).await.unwrap();
    assert!(!after.has_password);
    assert_eq!(after.password_changed_at, u.password_changed_at);
    assert!(s.find_password_hash(u.id).await.unwrap().is_none());
    assert!(matches!(
        s.clear_password(9_999_999).await,
        Err(StoreError::NotFound)
    ));
}

pub async fn rehash_replaces_current_hash_only(s: &dyn Store) {
    let u = s.insert_user(&new_user("hank")).await.unwrap();
    s.rehash_password(u.id, &hash(9)).await.unwrap();
    assert_eq!(
        s.find_password_hash(u.id).await.unwrap().unwrap().as_str(),
        hash(9).as_str()
    );
    assert_eq!(
        s.get_user(u.id).await.unwrap().password_changed_at,
        Some(T0)
    );
    let history = s.list_password_history(u.id, 10).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(
        history[0].as_str(),
        hash(9).as_str(),
        "history follows the re-hash so reuse is still detected"
    );
}

pub async fn must_change_and_last_login_are_recorded(s: &dyn Store) {
    let u = s.insert_user(&new_user("ivan")).await.unwrap();
    assert_eq!(u.last_login_at, None);
    s.update_must_change_password(u.id, true).await.unwrap();
    s.update_last_login(u.id, T0 + 99).await.unwrap();
    let got = s.get_user(u.id).await.unwrap();
    assert!(got.must_change_password);
    assert_eq!(got.last_login_at, Some(T0 + 99));
}

pub async fn sessions_insert_find_touch_delete(s: &dyn Store) {
    let u = s.insert_user(&new_user("judy")).await.unwrap();
    let rec = session(s, u.id, "tok-1", T0).await;
    assert_eq!(rec.user, u.id);
    assert_eq!(rec.last_seen_at, T0);
    let found = s
        .find_session(&TokenHash::of("tok-1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found, rec);
    assert_eq!(s.find_session(&TokenHash::of("tok-2")).await.unwrap(), None);
    s.touch_session(rec.id, T0 + 100).await.unwrap();
    assert_eq!(
        s.find_session(&TokenHash::of("tok-1"))
            .await
            .unwrap()
            .unwrap()
            .last_seen_at,
        T0 + 100
    );
    session(s, u.id, "tok-2", T0 + 5).await;
    let list = s.list_user_sessions(u.id).await.unwrap();
    assert_eq!(list.len(), 2);
    assert!(list[0].created_at >= list[1].created_at, "newest first");
    s.delete_session(rec.id).await.unwrap();
    s.delete_session(rec.id).await.unwrap();
    assert_eq!(s.find_session(&TokenHash::of("tok-1")).await.unwrap(), None);
}

pub async fn delete_user_sessions_keeps_one(s: &dyn Store) {
    let u = s.insert_user(&new_user("kim")).await.unwrap();
    let other = s.insert_user(&new_user("lee")).await.unwrap();
    let keep = session(s, u.id, "k1", T0).await;
    session(s, u.id, "k2", T0).await;
    session(s, u.id, "k3", T0).await;
    session(s, other.id, "l1", T0).await;
    assert_eq!(
        s.delete_user_sessions(u.id, Some(keep.id)).await.unwrap(),
        2
    );
    assert_eq!(s.list_user_sessions(u.id).await.unwrap(), vec![keep]);
    assert_eq!(s.delete_user_sessions(u.id, None).await.unwrap(), 1);
    assert_eq!(s.list_user_sessions(other.id).await.unwrap().len(), 1);
}

pub async fn expired_sessions_are_pruned(s: &dyn Store) {
    let u = s.insert_user(&new_user("mia")).await.unwrap();
    session(s, u.id, "old", T0).await;
    let fresh = session(s, u.id, "fresh", T0 + 1000).await;
    assert_eq!(
        s.delete_expired_sessions(T0 + 500, T0 - 1).await.unwrap(),
        1
    );
    assert_eq!(s.list_user_sessions(u.id).await.unwrap(), vec![fresh]);
    assert_eq!(s.delete_expired_sessions(T0, T0 + 1001).await.unwrap(), 1);
}

pub async fn one_time_token_is_consumed_once(s: &dyn Store) {
    let u = s.insert_user(&new_user("nina")).await.unwrap();
    let th = TokenHash::of("reset-1");
    s.insert_one_time_token(&NewOneTimeToken {
        hash: th.clone(),
        purpose: TokenPurpose::PasswordReset,
        user: Some(u.id),
        created_at: T0,
        expires_at: T0 + 3600,
    })
    .await
    .unwrap();
    let peek = s
        .find_one_time_token(TokenPurpose::PasswordReset, &th, T0 + 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(peek.user, Some(u.id));
    let used = s
        .consume_one_time_token(TokenPurpose::PasswordReset, &th, T0 + 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(used.id, peek.id);
    assert_eq!(
        s.consume_one_time_token(TokenPurpose::PasswordReset, &th, T0 + 3)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        s.find_one_time_token(TokenPurpose::PasswordReset, &th, T0 + 3)
            .await
            .unwrap(),
        None
    );
}

pub async fn one_time_token_expires_and_purpose_matters(s: &dyn Store) {
    let th = TokenHash::of("setup-1");
    s.insert_one_time_token(&NewOneTimeToken {
        hash: th.clone(),
        purpose: TokenPurpose::Setup,
        user: None,
        created_at: T0,
        expires_at: T0 + 3600,
    })
    .await
    .unwrap();
    assert_eq!(
        s.consume_one_time_token(TokenPurpose::PasswordReset, &th, T0)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        s.find_one_time_token(TokenPurpose::Setup, &th, T0 + 3600)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        s.consume_one_time_token(TokenPurpose::Setup, &th, T0 + 3600)
            .await
            .unwrap(),
        None
    );
    assert!(s
        .consume_one_time_token(TokenPurpose::Setup, &th, T0 + 3599)
        .await
        .unwrap()
        .is_some());
}

pub async fn revoking_user_tokens_voids_them(s: &dyn Store) {
    let u = s.insert_user(&new_user("olga")).await.unwrap();
    for t in ["r1", "r2"] {
        s.insert_one_time_token(&NewOneTimeToken {
            hash: TokenHash::of(t),
            purpose: TokenPurpose::PasswordReset,
            user: Some(u.id),
            created_at: T0,
            expires_at: T0 + 3600,
        })
        .await
        .unwrap();
    }
    s.insert_one_time_token(&NewOneTimeToken {
        hash: TokenHash::of("i1"),
        purpose: TokenPurpose::Invitation,
        user: Some(u.id),
        created_at: T0,
        expires_at: T0 + 3600,
    })
    .await
    .unwrap();
    assert_eq!(
        s.revoke_user_tokens(u.id, TokenPurpose::PasswordReset, T0 + 1)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        s.consume_one_time_token(TokenPurpose::PasswordReset, &TokenHash::of("r1"), T0 + 2)
            .await
            .unwrap(),
        None
    );
    assert!(s
        .consume_one_time_token(TokenPurpose::Invitation, &TokenHash::of("i1"), T0 + 2)
        .await
        .unwrap()
        .is_some());
}

pub async fn concurrent_consumption_succeeds_once(s: &dyn Store) {
    let th = TokenHash::of("race");
    s.insert_one_time_token(&NewOneTimeToken {
        hash: th.clone(),
        purpose: TokenPurpose::Setup,
        user: None,
        created_at: T0,
        expires_at: T0 + 3600,
    })
    .await
    .unwrap();
    let attempts = (0..8).map(|_| s.consume_one_time_token(TokenPurpose::Setup, &th, T0 + 1));
    let results = join_all(attempts).await;
    let wins = results
        .into_iter()
        .filter(|r| matches!(r, Ok(Some(_))))
        .count();
    assert_eq!(wins, 1);
}

pub async fn throttle_counts_failures_and_restarts_after_window(s: &dyn Store) {
    assert_eq!(s.find_throttle("acct:pat").await.unwrap(), None);
    assert_eq!(s.record_failure("acct:pat", T0, 60).await.unwrap(), 1);
    assert_eq!(s.record_failure("acct:pat", T0 + 10, 60).await.unwrap(), 2);
    assert_eq!(
        s.record_failure("ip:192.0.2.1", T0 + 10, 60).await.unwrap(),
        1
    );
    let rec = s.find_throttle("acct:pat").await.unwrap().unwrap();
    assert_eq!(
        (rec.failures, rec.last_failure_at, rec.blocked_until),
        (2, T0 + 10, 0)
    );
    assert_eq!(
        s.record_failure("acct:pat", T0 + 71, 60).await.unwrap(),
        1,
        "window passed"
    );
    s.delete_throttle("acct:pat").await.unwrap();
    assert_eq!(s.find_throttle("acct:pat").await.unwrap(), None);
}

pub async fn throttles_are_read_together_in_order(s: &dyn Store) {
    assert!(s.find_throttles(&[]).await.unwrap().is_empty());
    s.record_failure("login:pat", T0, 60).await.unwrap();
    s.record_failure("ip:192.0.2.1", T0 + 1, 60).await.unwrap();
    s.record_failure("ip:192.0.2.1", T0 + 2, 60).await.unwrap();
    s.update_blocked_until("ip:192.0.2.1", T0 + 900)
        .await
        .unwrap();
    let one = |key: &'static str| async move { s.find_throttle(key).await.unwrap() };
    assert_eq!(
        s.find_throttles(&["ip:192.0.2.1", "login:none", "login:pat"])
            .await
            .unwrap(),
        vec![one("ip:192.0.2.1").await, None, one("login:pat").await]
    );
    assert_eq!(
        s.find_throttles(&["login:pat", "ip:192.0.2.1"])
            .await
            .unwrap()
            .iter()
            .map(|t| t.map(|t| (t.failures, t.blocked_until)))
            .collect::<Vec<_>>(),
        vec![Some((1, 0)), Some((2, T0 + 900))]
    );
    assert_eq!(
        s.find_throttles(&["login:pat", "login:pat"]).await.unwrap(),
        vec![one("login:pat").await; 2],
        "a key asked twice is answered twice"
    );
}

pub async fn throttle_block_never_shortens(s: &dyn Store) {
    s.record_failure("k", T0, 60).await.unwrap();
    s.update_blocked_until("k", T0 + 900).await.unwrap();
    s.update_blocked_until("k", T0 + 5).await.unwrap();
    assert_eq!(
        s.find_throttle("k").await.unwrap().unwrap().blocked_until,
        T0 + 900
    );
}

pub async fn concurrent_failures_are_all_counted(s: &dyn Store) {
    let results = join_all((0..10).map(|_| s.record_failure("acct:race", T0, 60))).await;
    let mut counts: Vec<u32> = results.into_iter().map(|r| r.unwrap()).collect();
    counts.sort_unstable();
    assert_eq!(counts, (1..=10).collect::<Vec<u32>>());
}

pub async fn audit_is_appended_and_filtered(s: &dyn Store) {
    for (i, (subject, event)) in [
        ("alice", "login"),
        ("bob", "login"),
        ("alice", "password_changed"),
    ]
    .iter()
    .enumerate()
    {
        let id = s
            .append_audit(&NewAuditEvent {
                at: T0 + i as i64,
                actor: Some((*subject).into()),
                subject: Some((*subject).into()),
                event: (*event).into(),
                outcome: "success".into(),
                detail: None,
                ip: Some("192.0.2.7".into()),
                user_agent: Some("ua".into()),
            })
            .await
            .unwrap();
        assert!(id > 0);
    }
    let all = s
        .list_audit(&AuditFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].event, "password_changed", "newest first");
    assert_eq!(all[0].ip.as_deref(), Some("192.0.2.7"));
    let alice = s
        .list_audit(&AuditFilter {
            subject: Some("alice".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(alice.len(), 2);
    let logins = s
        .list_audit(&AuditFilter {
            event: Some("login".into()),
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(logins.len(), 1);
    assert_eq!(logins[0].subject.as_deref(), Some("bob"));
    let alice_logins = s
        .list_audit(&AuditFilter {
            subject: Some("alice".into()),
            event: Some("login".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(alice_logins.len(), 1);
    assert_eq!(alice_logins[0].event, "login");
}

fn audit_event(at: i64, subject: &str, event: &str) -> NewAuditEvent {
    NewAuditEvent {
        at,
        actor: Some("admin".into()),
        subject: Some(subject.into()),
        event: event.into(),
        outcome: "success".into(),
        detail: Some(format!("{event} of {subject}")),
        ip: None,
        user_agent: Some("ua".into()),
    }
}

/// Walks the whole stored chain from its checkpoint (or the genesis) and returns how many
/// events it checked.
async fn verify_chain(s: &dyn Store) -> Result<u64, bulwark_core::audit::ChainBreak> {
    use bulwark_core::audit::ChainVerifier;
    let checkpoints = s.list_audit_checkpoints().await.unwrap();
    let mut v = match checkpoints.last() {
        Some(c) => ChainVerifier::from_checkpoint(c.last_id, &c.last_hash),
        None => ChainVerifier::from_genesis(),
    };
    let mut after = checkpoints.last().map_or(0, |c| c.last_id);
    loop {
        let page = s.audit_chain(after, 3).await.unwrap();
        let Some(last) = page.last() else {
            return Ok(v.checked());
        };
        after = last.id;
        for r in &page {
            v.push(&r.link_fields(), r.prev_hash.as_deref(), r.hash.as_deref())?;
        }
    }
}

pub async fn audit_events_form_a_hash_chain(s: &dyn Store) {
    for i in 0..7 {
        s.append_audit(&audit_event(T0 + i, "alice", "login"))
            .await
            .unwrap();
    }
    assert_eq!(verify_chain(s).await.unwrap(), 7);
    let chain = s.audit_chain(0, 100).await.unwrap();
    assert_eq!(chain.len(), 7);
    assert_eq!(
        chain[0].prev_hash.as_deref(),
        Some(bulwark_core::audit::GENESIS)
    );
    for pair in chain.windows(2) {
        assert!(pair[0].id < pair[1].id);
        assert_eq!(pair[1].prev_hash, pair[0].hash);
    }
    assert_eq!(s.audit_chain(chain[5].id, 100).await.unwrap().len(), 1);
}

pub async fn concurrent_audit_appends_stay_one_chain(s: &dyn Store) {
    let events: Vec<NewAuditEvent> = (0..20)
        .map(|i| audit_event(T0, &format!("u{i}"), "login"))
        .collect();
    let appends = events.iter().map(|e| s.append_audit(e));
    let ids: Vec<i64> = join_all(appends)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 20);
    assert_eq!(verify_chain(s).await.unwrap(), 20);
}

/// Two stores on one database (two nodes, or a server and a CLI command) append in turn, at
/// once, and after one of them pruned every event: each links to the newest event, whoever
/// wrote it. Not in `store_contract_tests!` (it needs two stores): each backend calls it.
pub async fn audit_appends_of_two_stores_form_one_chain(a: &dyn Store, b: &dyn Store) {
    let mut ids = Vec::new();
    for (i, store) in [a, b, a, a, b, b, a].into_iter().enumerate() {
        let at = T0 + i64::try_from(i).unwrap();
        ids.push(
            store
                .append_audit(&audit_event(at, "alice", "login"))
                .await
                .unwrap(),
        );
    }
    assert_eq!(ids, (1..=7).collect::<Vec<_>>(), "one line, in turn");
    let events: Vec<NewAuditEvent> = (0..20)
        .map(|i| audit_event(T0 + 100, &format!("u{i}"), "login"))
        .collect();
    let appends = events.iter().enumerate().map(|(i, e)| {
        if i % 2 == 0 {
            a.append_audit(e)
        } else {
            b.append_audit(e)
        }
    });
    let mut ids: Vec<i64> = join_all(appends)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (8..=27).collect::<Vec<_>>(), "no gaps, no duplicates");
    assert_eq!(verify_chain(a).await.unwrap(), 27);
    let last = a.last_audit_before(T0 + 10_000).await.unwrap().unwrap();
    let all = AuditCheckpoint {
        at: T0 + 1000,
        last_id: last.id,
        last_hash: last.hash.clone().unwrap(),
        pruned: 27,
        key_id: "k1".into(),
        signature: "ab".into(),
    };
    assert_eq!(a.prune_audit(&all).await.unwrap(), 27);
    for store in [b, a, b] {
        store
            .append_audit(&audit_event(T0 + 2000, "bob", "login"))
            .await
            .unwrap();
    }
    assert_eq!(verify_chain(b).await.unwrap(), 3, "on from the checkpoint");
}

pub async fn audit_search_by_time_and_page(s: &dyn Store) {
    for i in 0..6 {
        let subject = if i % 2 == 0 { "alice" } else { "bob" };
        s.append_audit(&audit_event(T0 + i * 100, subject, "login"))
            .await
            .unwrap();
    }
    let window = s
        .list_audit(&AuditFilter {
            since: Some(T0 + 100),
            until: Some(T0 + 400),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let times: Vec<i64> = window.iter().map(|r| r.at - T0).collect();
    assert_eq!(
        times,
        vec![300, 200, 100],
        "newest first, until is exclusive"
    );
    let alice_late = s
        .list_audit(&AuditFilter {
            subject: Some("alice".into()),
            event: Some("login".into()),
            since: Some(T0 + 150),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let times: Vec<i64> = alice_late.iter().map(|r| r.at - T0).collect();
    assert_eq!(times, vec![400, 200]);
    let first_page = s
        .list_audit(&AuditFilter {
            limit: 4,
            ..Default::default()
        })
        .await
        .unwrap();
    let next_page = s
        .list_audit(&AuditFilter {
            before_id: Some(first_page[3].id),
            limit: 4,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(next_page.len(), 2);
    assert!(next_page[0].id < first_page[3].id);
}

pub async fn audit_pruning_leaves_a_checkpoint_the_chain_starts_from(s: &dyn Store) {
    for i in 0..6 {
        s.append_audit(&audit_event(T0 + i * 100, "alice", "login"))
            .await
            .unwrap();
    }
    assert!(s.last_audit_before(T0).await.unwrap().is_none());
    let last = s.last_audit_before(T0 + 250).await.unwrap().unwrap();
    assert_eq!(last.at, T0 + 200);
    let forged = AuditCheckpoint {
        at: T0 + 1000,
        last_id: last.id,
        last_hash: "0".repeat(64),
        pruned: 3,
        key_id: "k1".into(),
        signature: "ab".into(),
    };
    assert!(matches!(
        s.prune_audit(&forged).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        s.audit_chain(0, 100).await.unwrap().len(),
        6,
        "nothing pruned"
    );
    let checkpoint = AuditCheckpoint {
        last_hash: last.hash.clone().unwrap(),
        ..forged
    };
    assert_eq!(s.prune_audit(&checkpoint).await.unwrap(), 3);
    assert_eq!(s.list_audit_checkpoints().await.unwrap(), vec![checkpoint]);
    assert_eq!(verify_chain(s).await.unwrap(), 3);
    // The chain goes on from the remaining events, and after everything was pruned, from
    // the checkpoint.
    s.append_audit(&audit_event(T0 + 900, "bob", "login"))
        .await
        .unwrap();
    let last = s.last_audit_before(T0 + 10_000).await.unwrap().unwrap();
    let all = AuditCheckpoint {
        at: T0 + 2000,
        last_id: last.id,
        last_hash: last.hash.clone().unwrap(),
        pruned: 4,
        key_id: "k1".into(),
        signature: "cd".into(),
    };
    assert_eq!(s.prune_audit(&all).await.unwrap(), 4);
    assert_eq!(verify_chain(s).await.unwrap(), 0);
    let id = s
        .append_audit(&audit_event(T0 + 3000, "carol", "login"))
        .await
        .unwrap();
    assert!(id > last.id, "ids are never reused");
    assert_eq!(verify_chain(s).await.unwrap(), 1);
}

pub async fn recent_login_clients_are_distinct_and_recent(s: &dyn Store) {
    let event =
        |subject: &str, event: &str, outcome: &str, ip: &str, ua: Option<&str>| NewAuditEvent {
            at: T0,
            actor: Some(subject.into()),
            subject: Some(subject.into()),
            event: event.into(),
            outcome: outcome.into(),
            detail: None,
            ip: Some(ip.into()),
            user_agent: ua.map(Into::into),
        };
    assert!(s
        .recent_login_clients("alice", 10)
        .await
        .unwrap()
        .is_empty());
    for e in [
        event("alice", "login", "success", "192.0.2.1", Some("old")),
        event("alice", "login", "success", "192.0.2.2", None),
        event("alice", "login", "success", "192.0.2.2", None),
        event(
            "alice",
            "login",
            "failure",
            "198.51.100.9",
            Some("attacker"),
        ),
        event("alice", "logout", "success", "198.51.100.8", Some("other")),
        event("bob", "login", "success", "203.0.113.5", Some("bob")),
        event("alice", "login", "success", "192.0.2.3", Some("new")),
    ] {
        s.append_audit(&e).await.unwrap();
    }
    let mut all = s.recent_login_clients("alice", 10).await.unwrap();
    all.sort();
    assert_eq!(
        all,
        vec![
            (Some("192.0.2.1".into()), Some("old".into())),
            (Some("192.0.2.2".into()), None),
            (Some("192.0.2.3".into()), Some("new".into())),
        ],
        "successful logins only, of this subject only, each pair once"
    );
    // The limit counts events, newest first: the last three are .3, .2, .2.
    let mut recent = s.recent_login_clients("alice", 3).await.unwrap();
    recent.sort();
    assert_eq!(
        recent,
        vec![
            (Some("192.0.2.2".into()), None),
            (Some("192.0.2.3".into()), Some("new".into())),
        ]
    );

    // The exact-match question asks the same of one pair, NULL matching NULL.
    let seen = |ip: Option<&'static str>, ua: Option<&'static str>, limit: u32| async move {
        s.login_client_seen("alice", ip, ua, limit).await.unwrap()
    };
    assert!(seen(Some("192.0.2.3"), Some("new"), 1).await);
    assert!(
        seen(Some("192.0.2.2"), None, 3).await,
        "a missing agent matches a missing one"
    );
    assert!(seen(Some("192.0.2.1"), Some("old"), 10).await);
    assert!(
        !seen(Some("192.0.2.1"), Some("old"), 3).await,
        "beyond the limit of recent logins"
    );
    assert!(
        !seen(Some("192.0.2.2"), Some("old"), 10).await,
        "both must match"
    );
    assert!(
        !seen(Some("198.51.100.9"), Some("attacker"), 10).await,
        "a failed login is no known device"
    );
    assert!(
        !seen(Some("198.51.100.8"), Some("other"), 10).await,
        "another event is no login"
    );
    assert!(
        !seen(Some("203.0.113.5"), Some("bob"), 10).await,
        "another user's device"
    );
    assert!(!s.login_client_seen("carol", None, None, 10).await.unwrap());
}

pub async fn mail_queue_retries_and_deletes(s: &dyn Store) {
    let mail = NewMail {
        to: "a@example.com".into(),
        subject: "Hi".into(),
        body_text: "text".into(),
        body_html: "<p>html</p>".into(),
        created_at: T0,
    };
    assert_eq!(s.count_mail().await.unwrap(), (0, 0));
    let id = s.enqueue_mail(&mail).await.unwrap();
    s.enqueue_mail(&mail).await.unwrap();
    assert_eq!(s.count_mail().await.unwrap(), (2, 0));
    let due = s.list_due_mail(T0, 1).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(
        (due[0].id, due[0].attempts, due[0].body_html.as_str()),
        (id, 0, "<p>html</p>")
    );
    s.update_mail_failed(id, T0 + 60, "connection refused")
        .await
        .unwrap();
    let due = s.list_due_mail(T0 + 59, 10).await.unwrap();
    assert!(
        due.iter().all(|m| m.id != id),
        "not due before its retry time"
    );
    assert_eq!(s.count_mail().await.unwrap(), (2, 1));
    let retry = s.list_due_mail(T0 + 60, 10).await.unwrap();
    assert_eq!(retry.iter().find(|m| m.id == id).unwrap().attempts, 1);
    for m in retry {
        s.delete_mail(m.id).await.unwrap();
    }
    assert!(s.list_due_mail(T0 + 1000, 10).await.unwrap().is_empty());
    assert_eq!(s.count_mail().await.unwrap(), (0, 0));
}

pub async fn ping_and_migrate_are_idempotent(s: &dyn Store) {
    s.ping().await.unwrap();
    s.migrate().await.unwrap();
    s.insert_user(&new_user("quinn")).await.unwrap();
    s.migrate().await.unwrap();
    assert!(s
        .find_user_by_login(&Login::parse("quinn").unwrap())
        .await
        .unwrap()
        .is_some());
}

pub async fn session_stage_is_stored(s: &dyn Store) {
    let u = s.insert_user(&new_user("stan")).await.unwrap();
    let half = s
        .insert_session(&NewSession {
            token_hash: TokenHash::of("half"),
            user: u.id,
            stage: SessionStage::SecondFactor,
            two_factor: false,
            created_at: T0,
            ip: None,
            user_agent: None,
        })
        .await
        .unwrap();
    assert_eq!(half.stage, SessionStage::SecondFactor);
    assert!(!half.two_factor);
    assert_eq!(
        s.find_session(&TokenHash::of("half"))
            .await
            .unwrap()
            .unwrap()
            .stage,
        SessionStage::SecondFactor
    );
    let full = session(s, u.id, "full", T0).await;
    assert_eq!(full.stage, SessionStage::Full);
    assert!(!full.two_factor);
    let strong = s
        .insert_session(&NewSession {
            token_hash: TokenHash::of("strong"),
            user: u.id,
            stage: SessionStage::Full,
            two_factor: true,
            created_at: T0,
            ip: None,
            user_agent: None,
        })
        .await
        .unwrap();
    assert!(strong.two_factor);
    let found = s
        .find_session(&TokenHash::of("strong"))
        .await
        .unwrap()
        .unwrap();
    assert!(found.two_factor && found.stage == SessionStage::Full);
    assert_eq!(s.list_user_sessions(u.id).await.unwrap().len(), 3);
}

pub async fn device_account_and_grace_are_recorded(s: &dyn Store) {
    let u = s.insert_user(&new_user("kiosk1")).await.unwrap();
    assert!(!u.device_account);
    assert!(u.allowed_networks.is_empty());
    assert_eq!(u.grace_started_at, None);
    s.update_device_account(u.id, true, &["10.1.0.0/16".into(), "192.0.2.5/32".into()])
        .await
        .unwrap();
    assert_eq!(s.start_grace(u.id, T0 + 10).await.unwrap(), T0 + 10);
    assert_eq!(
        s.start_grace(u.id, T0 + 99).await.unwrap(),
        T0 + 10,
        "grace starts once"
    );
    let got = s.get_user(u.id).await.unwrap();
    assert!(got.device_account);
    assert_eq!(
        got.allowed_networks,
        vec!["10.1.0.0/16".to_string(), "192.0.2.5/32".to_string()]
    );
    assert_eq!(got.grace_started_at, Some(T0 + 10));
    assert!(matches!(
        s.update_device_account(4242, true, &[]).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.start_grace(4242, T0).await,
        Err(StoreError::NotFound)
    ));
}

fn factor(user: UserId, sealed: &str) -> NewTotpFactor {
    NewTotpFactor {
        user,
        secret_sealed: sealed.into(),
        key_id: "k1".into(),
        algorithm: "sha1".into(),
        digits: 6,
        period: 30,
        created_at: T0,
    }
}

pub async fn pending_totp_is_replaced_until_confirmed(s: &dyn Store) {
    let u = s.insert_user(&new_user("tina")).await.unwrap();
    assert_eq!(s.find_totp(u.id).await.unwrap(), None);
    s.upsert_pending_totp(&factor(u.id, "sealed-1"))
        .await
        .unwrap();
    s.upsert_pending_totp(&factor(u.id, "sealed-2"))
        .await
        .unwrap();
    let f = s.find_totp(u.id).await.unwrap().unwrap();
    assert_eq!(
        (f.secret_sealed.as_str(), f.confirmed_at, f.last_used_step),
        ("sealed-2", None, None)
    );
    assert_eq!(
        (f.digits, f.period, f.algorithm.as_str(), f.key_id.as_str()),
        (6, 30, "sha1", "k1")
    );
    assert!(
        !s.update_totp_step(u.id, 5).await.unwrap(),
        "a pending factor cannot be used"
    );
    assert!(s.confirm_totp(u.id, T0 + 5, 100).await.unwrap());
    assert!(
        !s.confirm_totp(u.id, T0 + 6, 101).await.unwrap(),
        "confirmed once"
    );
    let f = s.find_totp(u.id).await.unwrap().unwrap();
    assert_eq!(
        (f.confirmed_at, f.last_used_step),
        (Some(T0 + 5), Some(100))
    );
    let err = s
        .upsert_pending_totp(&factor(u.id, "sealed-3"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(
        s.find_totp(u.id).await.unwrap().unwrap().secret_sealed,
        "sealed-2"
    );
    assert!(s.delete_totp(u.id).await.unwrap());
    assert!(!s.delete_totp(u.id).await.unwrap());
    s.upsert_pending_totp(&factor(u.id, "sealed-4"))
        .await
        .unwrap();
}

pub async fn totp_step_only_moves_forward(s: &dyn Store) {
    let u = s.insert_user(&new_user("ulla")).await.unwrap();
    s.upsert_pending_totp(&factor(u.id, "x")).await.unwrap();
    s.confirm_totp(u.id, T0, 100).await.unwrap();
    assert!(
        !s.update_totp_step(u.id, 100).await.unwrap(),
        "same step refused"
    );
    assert!(
        !s.update_totp_step(u.id, 99).await.unwrap(),
        "older step refused"
    );
    assert!(s.update_totp_step(u.id, 101).await.unwrap());
    assert_eq!(
        s.find_totp(u.id).await.unwrap().unwrap().last_used_step,
        Some(101)
    );
    assert!(!s.update_totp_step(4242, 500).await.unwrap());
}

pub async fn concurrent_totp_use_succeeds_once(s: &dyn Store) {
    let u = s.insert_user(&new_user("vera")).await.unwrap();
    s.upsert_pending_totp(&factor(u.id, "x")).await.unwrap();
    s.confirm_totp(u.id, T0, 10).await.unwrap();
    let results = join_all((0..8).map(|_| s.update_totp_step(u.id, 11))).await;
    assert_eq!(
        results
            .into_iter()
            .filter(|r| matches!(r, Ok(true)))
            .count(),
        1
    );
}

pub async fn totp_secret_rotation_checks_the_old_key(s: &dyn Store) {
    let a = s.insert_user(&new_user("walt")).await.unwrap();
    let b = s.insert_user(&new_user("xena")).await.unwrap();
    assert!(s.totp_key_ids().await.unwrap().is_empty());
    s.upsert_pending_totp(&factor(a.id, "a-k1")).await.unwrap();
    s.upsert_pending_totp(&factor(b.id, "b-k1")).await.unwrap();
    assert_eq!(s.list_totp_factors().await.unwrap().len(), 2);
    assert!(s
        .update_totp_secret(a.id, "a-k2", "k2", "k1")
        .await
        .unwrap());
    assert!(
        !s.update_totp_secret(a.id, "a-k3", "k3", "k1")
            .await
            .unwrap(),
        "already rotated"
    );
    let f = s.find_totp(a.id).await.unwrap().unwrap();
    assert_eq!(
        (f.secret_sealed.as_str(), f.key_id.as_str()),
        ("a-k2", "k2")
    );
    assert_eq!(s.totp_key_ids().await.unwrap(), vec!["k1", "k2"]);
}

pub async fn recovery_codes_work_once_and_are_replaced(s: &dyn Store) {
    let u = s.insert_user(&new_user("yuri")).await.unwrap();
    let hashes: Vec<String> = (0..10).map(|i| format!("h{i}")).collect();
    s.replace_recovery_codes(u.id, &hashes, T0).await.unwrap();
    assert_eq!(s.count_recovery_codes(u.id).await.unwrap(), 10);
    assert!(s.use_recovery_code(u.id, "h3", T0 + 1).await.unwrap());
    assert!(
        !s.use_recovery_code(u.id, "h3", T0 + 2).await.unwrap(),
        "once"
    );
    assert!(!s.use_recovery_code(u.id, "nope", T0 + 2).await.unwrap());
    assert_eq!(s.count_recovery_codes(u.id).await.unwrap(), 9);
    let other = s.insert_user(&new_user("zack")).await.unwrap();
    assert!(
        !s.use_recovery_code(other.id, "h4", T0).await.unwrap(),
        "codes belong to one user"
    );
    s.replace_recovery_codes(u.id, &["n1".to_string(), "n2".to_string()], T0 + 3)
        .await
        .unwrap();
    assert!(
        !s.use_recovery_code(u.id, "h4", T0 + 4).await.unwrap(),
        "old set gone"
    );
    assert_eq!(s.count_recovery_codes(u.id).await.unwrap(), 2);
    s.delete_recovery_codes(u.id).await.unwrap();
    assert_eq!(s.count_recovery_codes(u.id).await.unwrap(), 0);
}

pub async fn user_security_lists_second_factors_page_by_page(s: &dyn Store) {
    assert_eq!(s.max_user_id().await.unwrap(), 0, "no users yet");
    let a = s.insert_user(&new_user("ann")).await.unwrap();
    let b = s.insert_user(&new_user("ben")).await.unwrap();
    let c = s.insert_user(&new_user("cal")).await.unwrap();
    // ann: confirmed authenticator, 3 codes of which 1 used; ben: pending only; cal: nothing.
    s.upsert_pending_totp(&factor(a.id, "sa")).await.unwrap();
    assert!(s.confirm_totp(a.id, T0, 1).await.unwrap());
    let codes: Vec<String> = (0..3).map(|i| format!("c{i}")).collect();
    s.replace_recovery_codes(a.id, &codes, T0).await.unwrap();
    assert!(s.use_recovery_code(a.id, "c1", T0 + 1).await.unwrap());
    s.upsert_pending_totp(&factor(b.id, "sb")).await.unwrap();
    s.update_active(c.id, false).await.unwrap();

    let first = s.list_user_security(0, UserId::MAX, 2).await.unwrap();
    assert_eq!(first.len(), 2);
    let (ann, ben) = (first.get(0).unwrap(), first.get(1).unwrap());
    assert_eq!(ann.login, "ann");
    assert!(ann.totp_active);
    assert_eq!(ann.recovery_codes_left, 2);
    assert_eq!(ben.login, "ben");
    assert!(!ben.totp_active, "a pending factor is not active");
    let rest = s.list_user_security(ben.id, UserId::MAX, 2).await.unwrap();
    assert_eq!(rest.len(), 1);
    let cal = rest.get(0).unwrap();
    assert_eq!(cal.id, c.id);
    assert!(!cal.active, "inactive users are listed too");
    assert!(s
        .list_user_security(c.id, UserId::MAX, 2)
        .await
        .unwrap()
        .is_empty());
    // A range: ids above the first and up to the second.
    let range = s.list_user_security(a.id, b.id, 10).await.unwrap();
    assert_eq!(range.len(), 1);
    assert_eq!(range.get(0).unwrap().id, b.id);
    assert!(s
        .list_user_security(b.id, b.id, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(s.max_user_id().await.unwrap(), c.id);
    s.delete_user(c.id).await.unwrap();
    assert_eq!(s.max_user_id().await.unwrap(), b.id);
}

/// The report rows (`list_user_security`, `list_users_for_admin`) agree with what sign-in
/// reads (`get_user`, `find_totp`, `count_recovery_codes`) after every kind of change, for
/// the user changed and no other.
pub async fn user_security_follows_every_change(s: &dyn Store) {
    let u = s.insert_user(&new_user("ann")).await.unwrap();
    let other = s.insert_user(&new_user("bob")).await.unwrap();
    s.upsert_pending_totp(&factor(other.id, "so"))
        .await
        .unwrap();
    assert!(s.confirm_totp(other.id, T0, 1).await.unwrap());
    s.replace_recovery_codes(other.id, &["o1".to_string()], T0)
        .await
        .unwrap();
    let check = |what: &'static str| async move {
        let listed = s.list_user_security(0, UserId::MAX, 10).await.unwrap();
        let admin = s
            .list_users_for_admin(&AdminUserFilter {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(listed.len(), admin.len(), "{what}: both lists agree");
        for (row, listed) in admin.into_iter().zip(listed.iter()) {
            assert!(
                listed.agrees_with(&row),
                "{what}: both lists agree: {listed:?} {row:?}"
            );
            let id = row.user.id;
            assert_eq!(row.user, s.get_user(id).await.unwrap(), "{what}: user {id}");
            let confirmed = s
                .find_totp(id)
                .await
                .unwrap()
                .is_some_and(|f| f.confirmed_at.is_some());
            assert_eq!(row.totp_active, confirmed, "{what}: authenticator of {id}");
            assert_eq!(
                row.recovery_codes_left,
                s.count_recovery_codes(id).await.unwrap(),
                "{what}: codes of {id}"
            );
        }
    };
    check("new users").await;
    s.update_groups(u.id, &[group("portal"), group("admins"), group("finance")])
        .await
        .unwrap();
    check("groups replaced").await;
    s.update_groups(u.id, &[]).await.unwrap();
    check("groups emptied").await;
    s.upsert_pending_totp(&factor(u.id, "s1")).await.unwrap();
    check("pending authenticator").await;
    assert!(s.confirm_totp(u.id, T0, 1).await.unwrap());
    check("confirmed authenticator").await;
    assert!(s.update_totp_step(u.id, 5).await.unwrap());
    check("a code's time step recorded").await;
    s.update_groups(u.id, &[group("internal")]).await.unwrap();
    s.update_groups(u.id, &[group("internal")]).await.unwrap();
    check("groups set to what they were").await;
    let codes: Vec<String> = (0..4).map(|i| format!("c{i}")).collect();
    s.replace_recovery_codes(u.id, &codes, T0).await.unwrap();
    check("codes issued").await;
    assert!(s.use_recovery_code(u.id, "c2", T0 + 1).await.unwrap());
    check("a code used").await;
    s.replace_recovery_codes(u.id, &codes[..2], T0 + 2)
        .await
        .unwrap();
    check("codes replaced").await;
    s.delete_recovery_codes(u.id).await.unwrap();
    check("codes deleted").await;
    assert!(s.delete_totp(u.id).await.unwrap());
    check("authenticator removed").await;
    s.upsert_pending_totp(&factor(u.id, "s2")).await.unwrap();
    assert!(s.confirm_totp(u.id, T0 + 3, 2).await.unwrap());
    s.replace_recovery_codes(u.id, &codes, T0 + 3)
        .await
        .unwrap();
    s.delete_user(u.id).await.unwrap();
    check("user deleted").await;
    let left = s.list_user_security(0, UserId::MAX, 10).await.unwrap();
    assert_eq!(left.len(), 1);
    let bob = left.get(0).unwrap();
    assert!(bob.totp_active && bob.recovery_codes_left == 1);
}

pub async fn admin_user_list_filters_and_pages_by_login(s: &dyn Store) {
    let mut ids = BTreeMap::new();
    for login in ["amy", "bea", "cyd", "dan", "eve"] {
        let mut u = new_user(login);
        u.created_at = T0 - 1000;
        ids.insert(login, s.insert_user(&u).await.unwrap().id);
    }
    s.upsert_pending_totp(&factor(ids["bea"], "x"))
        .await
        .unwrap();
    assert!(s.confirm_totp(ids["bea"], T0, 1).await.unwrap());
    s.upsert_pending_totp(&factor(ids["cyd"], "y"))
        .await
        .unwrap();
    s.update_active(ids["dan"], false).await.unwrap();
    s.update_last_login(ids["amy"], T0).await.unwrap();
    s.update_groups(ids["eve"], &[group("portal")])
        .await
        .unwrap();
    s.record_failure("login:cyd", T0, 60).await.unwrap();
    s.update_blocked_until("login:cyd", T0 + 300).await.unwrap();
    s.record_failure("login:eve", T0 - 900, 60).await.unwrap();
    s.update_blocked_until("login:eve", T0 - 600).await.unwrap();

    let logins = |list: Vec<UserSecurity>| -> Vec<String> {
        list.into_iter().map(|u| u.user.login).collect()
    };
    let filter = |f: AdminUserFilter| AdminUserFilter { limit: 10, ..f };
    let all = s
        .list_users_for_admin(&filter(AdminUserFilter::default()))
        .await
        .unwrap();
    assert_eq!(logins(all.clone()), ["amy", "bea", "cyd", "dan", "eve"]);
    assert!(
        all[1].totp_active && !all[2].totp_active,
        "pending is not active"
    );
    for (f, want) in [
        (
            AdminUserFilter {
                two_factor: Some(true),
                ..Default::default()
            },
            vec!["bea"],
        ),
        (
            AdminUserFilter {
                two_factor: Some(false),
                active: Some(true),
                ..Default::default()
            },
            vec!["amy", "cyd", "eve"],
        ),
        (
            AdminUserFilter {
                active: Some(false),
                ..Default::default()
            },
            vec!["dan"],
        ),
        (
            AdminUserFilter {
                locked_at: Some(T0),
                ..Default::default()
            },
            vec!["cyd"],
        ),
        (
            AdminUserFilter {
                idle_since: Some(T0 - 10),
                ..Default::default()
            },
            vec!["bea", "cyd", "dan", "eve"],
        ),
        (
            AdminUserFilter {
                password_changed_before: Some(T0),
                ..Default::default()
            },
            vec!["amy", "bea", "cyd", "dan", "eve"],
        ),
        (
            AdminUserFilter {
                password_changed_before: Some(T0 - 2000),
                ..Default::default()
            },
            vec![],
        ),
        (
            AdminUserFilter {
                group: Some("portal".into()),
                ..Default::default()
            },
            vec!["eve"],
        ),
        (
            AdminUserFilter {
                search: Some("Y".into()),
                ..Default::default()
            },
            vec!["amy", "cyd"],
        ),
        (
            AdminUserFilter {
                search: Some("%".into()),
                ..Default::default()
            },
            vec![],
        ),
    ] {
        let what = format!("{f:?}");
        assert_eq!(
            logins(s.list_users_for_admin(&filter(f)).await.unwrap()),
            want,
            "{what}"
        );
    }
    // Pages of two by login.
    let page = |after: Option<&str>| AdminUserFilter {
        after_login: after.map(Into::into),
        limit: 2,
        ..Default::default()
    };
    assert_eq!(
        logins(s.list_users_for_admin(&page(None)).await.unwrap()),
        ["amy", "bea"]
    );
    assert_eq!(
        logins(s.list_users_for_admin(&page(Some("bea"))).await.unwrap()),
        ["cyd", "dan"]
    );
    assert_eq!(
        logins(s.list_users_for_admin(&page(Some("dan"))).await.unwrap()),
        ["eve"]
    );
}

pub async fn session_password_check_time_is_recorded(s: &dyn Store) {
    let u = s.insert_user(&new_user("pat")).await.unwrap();
    let created = session(s, u.id, "tok-pat", T0).await;
    assert_eq!(created.password_checked_at, T0, "checked at login");
    s.update_session_password_checked(created.id, T0 + 700)
        .await
        .unwrap();
    let found = s
        .find_session(&TokenHash::of("tok-pat"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.password_checked_at, T0 + 700);
    assert_eq!(found.created_at, T0);
    assert_eq!(
        s.list_user_sessions(u.id).await.unwrap()[0].password_checked_at,
        T0 + 700
    );
    s.delete_session(created.id).await.unwrap();
    assert!(matches!(
        s.update_session_password_checked(created.id, T0).await,
        Err(StoreError::NotFound)
    ));
}

pub async fn audit_events_are_counted_by_kind_since_a_time(s: &dyn Store) {
    for (at, event) in [
        (T0, "account_locked"),
        (T0 + 10, "account_locked"),
        (T0 + 20, "totp_reset_by_admin"),
        (T0 + 30, "account_locked"),
    ] {
        s.append_audit(&audit_event(at, "alice", event))
            .await
            .unwrap();
    }
    assert_eq!(s.count_audit_events("account_locked", T0).await.unwrap(), 3);
    assert_eq!(
        s.count_audit_events("account_locked", T0 + 10)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        s.count_audit_events("totp_reset_by_admin", T0 + 21)
            .await
            .unwrap(),
        0
    );
}

pub async fn concurrent_recovery_code_use_succeeds_once(s: &dyn Store) {
    let u = s.insert_user(&new_user("abby")).await.unwrap();
    s.replace_recovery_codes(u.id, &["only".to_string()], T0)
        .await
        .unwrap();
    let results = join_all((0..8).map(|_| s.use_recovery_code(u.id, "only", T0 + 1))).await;
    assert_eq!(
        results
            .into_iter()
            .filter(|r| matches!(r, Ok(true)))
            .count(),
        1
    );
}

pub async fn email_codes_are_single_use_and_expire(s: &dyn Store) {
    let u = s.insert_user(&new_user("bert")).await.unwrap();
    s.insert_email_code(u.id, "c1", T0, T0 + 600).await.unwrap();
    s.insert_email_code(u.id, "c2", T0 + 10, T0 + 610)
        .await
        .unwrap();
    assert_eq!(s.count_email_codes_since(u.id, T0).await.unwrap(), 2);
    assert_eq!(s.count_email_codes_since(u.id, T0 + 5).await.unwrap(), 1);
    assert!(s.consume_email_code(u.id, "c1", T0 + 100).await.unwrap());
    assert!(
        !s.consume_email_code(u.id, "c1", T0 + 101).await.unwrap(),
        "once"
    );
    assert!(
        !s.consume_email_code(u.id, "c2", T0 + 610).await.unwrap(),
        "expired"
    );
    let results = join_all((0..6).map(|_| s.consume_email_code(u.id, "c2", T0 + 200))).await;
    assert_eq!(
        results
            .into_iter()
            .filter(|r| matches!(r, Ok(true)))
            .count(),
        1
    );
}

pub async fn trusted_devices_are_listed_touched_and_revoked(s: &dyn Store) {
    let u = s.insert_user(&new_user("cleo")).await.unwrap();
    let d = NewTrustedDevice {
        token_hash: TokenHash::of("dev1"),
        user: u.id,
        name: "Firefox on Linux".into(),
        created_at: T0,
        ip: Some("192.0.2.1".into()),
        expires_at: T0 + 86_400,
    };
    let rec = s.insert_trusted_device(&d).await.unwrap();
    assert_eq!(
        (
            rec.user,
            rec.name.as_str(),
            rec.last_used_at,
            rec.expires_at
        ),
        (u.id, "Firefox on Linux", T0, T0 + 86_400)
    );
    assert_eq!(
        s.find_trusted_device(&TokenHash::of("dev1")).await.unwrap(),
        Some(rec.clone())
    );
    assert_eq!(
        s.find_trusted_device(&TokenHash::of("dev2")).await.unwrap(),
        None
    );
    s.touch_trusted_device(rec.id, T0 + 50, Some("192.0.2.9"))
        .await
        .unwrap();
    let got = s
        .find_trusted_device(&TokenHash::of("dev1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (got.last_used_at, got.last_ip.as_deref()),
        (T0 + 50, Some("192.0.2.9"))
    );
    let d2 = NewTrustedDevice {
        token_hash: TokenHash::of("dev2"),
        created_at: T0 + 5,
        ..d.clone()
    };
    s.insert_trusted_device(&d2).await.unwrap();
    assert_eq!(s.list_user_trusted_devices(u.id).await.unwrap().len(), 2);
    let other = s.insert_user(&new_user("dora")).await.unwrap();
    assert!(
        !s.delete_trusted_device(other.id, rec.id).await.unwrap(),
        "not theirs"
    );
    assert!(s.delete_trusted_device(u.id, rec.id).await.unwrap());
    assert_eq!(s.delete_user_trusted_devices(u.id).await.unwrap(), 1);
    assert!(s.list_user_trusted_devices(u.id).await.unwrap().is_empty());
}

pub async fn second_factors_go_with_the_user(s: &dyn Store) {
    let u = s.insert_user(&new_user("ella")).await.unwrap();
    s.upsert_pending_totp(&factor(u.id, "x")).await.unwrap();
    s.replace_recovery_codes(u.id, &["r".to_string()], T0)
        .await
        .unwrap();
    s.insert_email_code(u.id, "e", T0, T0 + 600).await.unwrap();
    let d = NewTrustedDevice {
        token_hash: TokenHash::of("ella-dev"),
        user: u.id,
        name: "x".into(),
        created_at: T0,
        ip: None,
        expires_at: T0 + 60,
    };
    s.insert_trusted_device(&d).await.unwrap();
    s.delete_user(u.id).await.unwrap();
    assert_eq!(s.find_totp(u.id).await.unwrap(), None);
    assert_eq!(s.count_recovery_codes(u.id).await.unwrap(), 0);
    assert_eq!(s.count_email_codes_since(u.id, 0).await.unwrap(), 0);
    assert_eq!(
        s.find_trusted_device(&TokenHash::of("ella-dev"))
            .await
            .unwrap(),
        None
    );
}

fn api_key(user: UserId, name: &str, at: i64) -> (ApiKey, NewApiKey) {
    let key = ApiKey::generate();
    let new = NewApiKey {
        user,
        name: KeyName::parse(name).unwrap(),
        digest: key.digest(),
        display_prefix: key.display_prefix(),
        scopes: Scopes::parse(&["gateway", "api:read"]).unwrap(),
        created_at: at,
        expires_at: Some(at + 86_400),
    };
    (key, new)
}

pub async fn api_keys_are_found_by_digest_and_listed(s: &dyn Store) {
    let u = s.insert_user(&new_user("fay")).await.unwrap();
    let other = s.insert_user(&new_user("gus")).await.unwrap();
    let (k1, n1) = api_key(u.id, "nightly sync", T0);
    let rec = s.insert_api_key(&n1).await.unwrap();
    assert_eq!(
        (
            rec.user,
            rec.name.as_str(),
            rec.display_prefix.as_str(),
            rec.scopes,
            rec.created_at,
            rec.expires_at,
            rec.last_used_at,
            rec.revoked_at
        ),
        (
            u.id,
            "nightly sync",
            k1.display_prefix().as_str(),
            n1.scopes,
            T0,
            Some(T0 + 86_400),
            None,
            None
        )
    );
    assert_eq!(
        s.find_api_key(&k1.digest()).await.unwrap(),
        Some(rec.clone())
    );
    assert_eq!(
        s.find_api_key(&ApiKey::generate().digest()).await.unwrap(),
        None
    );
    let (_, mut n2) = api_key(u.id, "forever", T0 + 10);
    n2.expires_at = None;
    n2.scopes = Scopes::parse(&["api:write"]).unwrap();
    let rec2 = s.insert_api_key(&n2).await.unwrap();
    assert_eq!((rec2.expires_at, rec2.scopes), (None, n2.scopes));
    let (_, n3) = api_key(other.id, "nightly sync", T0 + 5);
    let rec3 = s.insert_api_key(&n3).await.unwrap();
    let mine: Vec<i64> = s
        .list_user_api_keys(u.id)
        .await
        .unwrap()
        .iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(mine, vec![rec2.id, rec.id], "newest first");
    let all: Vec<i64> = s
        .list_api_keys()
        .await
        .unwrap()
        .iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(
        all,
        vec![rec2.id, rec.id, rec3.id],
        "by user, then newest first"
    );
}

pub async fn api_key_names_are_unique_among_live_keys(s: &dyn Store) {
    let u = s.insert_user(&new_user("hal")).await.unwrap();
    let other = s.insert_user(&new_user("ida")).await.unwrap();
    let (_, n1) = api_key(u.id, "deploy", T0);
    let rec = s.insert_api_key(&n1).await.unwrap();
    let (_, twin) = api_key(u.id, "deploy", T0 + 1);
    let err = s.insert_api_key(&twin).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    let (_, same_digest) = api_key(u.id, "other", T0 + 1);
    let same_digest = NewApiKey {
        digest: n1.digest.clone(),
        ..same_digest
    };
    let err = s.insert_api_key(&same_digest).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    let (_, theirs) = api_key(other.id, "deploy", T0 + 1);
    s.insert_api_key(&theirs).await.unwrap();
    // Once revoked, the name is free again.
    assert!(s.revoke_api_key(u.id, rec.id, T0 + 2).await.unwrap());
    s.insert_api_key(&twin).await.unwrap();
}

pub async fn api_keys_are_revoked_once(s: &dyn Store) {
    let u = s.insert_user(&new_user("jan")).await.unwrap();
    let other = s.insert_user(&new_user("kim")).await.unwrap();
    let (k1, n1) = api_key(u.id, "one", T0);
    let rec = s.insert_api_key(&n1).await.unwrap();
    assert!(
        !s.revoke_api_key(other.id, rec.id, T0 + 1).await.unwrap(),
        "not theirs"
    );
    assert!(!s.revoke_api_key(u.id, 4242, T0 + 1).await.unwrap());
    assert!(s.revoke_api_key(u.id, rec.id, T0 + 2).await.unwrap());
    assert!(
        !s.revoke_api_key(u.id, rec.id, T0 + 3).await.unwrap(),
        "once"
    );
    let found = s.find_api_key(&k1.digest()).await.unwrap().unwrap();
    assert_eq!(found.revoked_at, Some(T0 + 2), "kept, marked revoked");
    for name in ["two", "three"] {
        let (_, n) = api_key(u.id, name, T0 + 4);
        s.insert_api_key(&n).await.unwrap();
    }
    let (_, theirs) = api_key(other.id, "theirs", T0);
    let theirs = s.insert_api_key(&theirs).await.unwrap();
    assert_eq!(s.revoke_user_api_keys(u.id, T0 + 5).await.unwrap(), 2);
    assert_eq!(s.revoke_user_api_keys(u.id, T0 + 6).await.unwrap(), 0);
    let keys = s.list_user_api_keys(u.id).await.unwrap();
    assert_eq!(keys.len(), 3);
    assert!(keys.iter().all(|k| k.revoked_at.is_some()));
    assert_eq!(
        keys.iter().find(|k| k.id == rec.id).unwrap().revoked_at,
        Some(T0 + 2),
        "an earlier revocation keeps its time"
    );
    let theirs_now = s.list_user_api_keys(other.id).await.unwrap();
    assert_eq!(theirs_now, vec![theirs]);
}

pub async fn api_key_last_use_moves_forward_in_bulk(s: &dyn Store) {
    let u = s.insert_user(&new_user("lou")).await.unwrap();
    let (k1, n1) = api_key(u.id, "a", T0);
    let (k2, n2) = api_key(u.id, "b", T0);
    let r1 = s.insert_api_key(&n1).await.unwrap();
    let r2 = s.insert_api_key(&n2).await.unwrap();
    s.update_api_keys_last_used(&[]).await.unwrap();
    s.update_api_keys_last_used(&[(r1.id, T0 + 10), (r2.id, T0 + 5), (4242, T0 + 7)])
        .await
        .unwrap();
    let last = |k: &ApiKey| {
        let digest = k.digest();
        async move { s.find_api_key(&digest).await.unwrap().unwrap().last_used_at }
    };
    assert_eq!(last(&k1).await, Some(T0 + 10));
    assert_eq!(last(&k2).await, Some(T0 + 5));
    // Another node flushing an older use afterwards does not move it back.
    s.update_api_keys_last_used(&[(r1.id, T0 + 3), (r2.id, T0 + 20)])
        .await
        .unwrap();
    assert_eq!(last(&k1).await, Some(T0 + 10));
    assert_eq!(last(&k2).await, Some(T0 + 20));
}

pub async fn api_keys_go_with_the_user(s: &dyn Store) {
    let u = s.insert_user(&new_user("max")).await.unwrap();
    let (k1, n1) = api_key(u.id, "a", T0);
    s.insert_api_key(&n1).await.unwrap();
    s.delete_user(u.id).await.unwrap();
    assert_eq!(s.find_api_key(&k1.digest()).await.unwrap(), None);
    assert!(s.list_user_api_keys(u.id).await.unwrap().is_empty());
    assert!(s.list_api_keys().await.unwrap().is_empty());
}

fn setting(name: &str, old: Option<&str>, new: Option<&str>) -> SettingChange {
    SettingChange {
        name: name.into(),
        old: old.map(Into::into),
        new: new.map(Into::into),
    }
}

async fn settings_map(s: &dyn Store) -> BTreeMap<String, String> {
    s.list_settings()
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.name, r.value))
        .collect()
}

pub async fn settings_are_seeded_once(s: &dyn Store) {
    assert!(s.list_settings().await.unwrap().is_empty());
    let first = [
        ("a.b".to_string(), "1".to_string()),
        ("c".to_string(), "\"x\"".to_string()),
    ];
    let second = [("a.b".to_string(), "2".to_string())];
    // Two nodes starting at once: exactly one seeds.
    let seeded = join_all(vec![
        s.seed_settings(&first, T0),
        s.seed_settings(&second, T0 + 1),
    ])
    .await;
    let seeded: Vec<bool> = seeded.into_iter().map(Result::unwrap).collect();
    assert_eq!(seeded.iter().filter(|&&b| b).count(), 1, "{seeded:?}");
    let stored = settings_map(s).await;
    assert!(
        stored == first.iter().cloned().collect::<BTreeMap<_, _>>()
            || stored == second.iter().cloned().collect::<BTreeMap<_, _>>(),
        "one seed wins whole: {stored:?}"
    );
    assert!(!s.seed_settings(&first, T0 + 2).await.unwrap());
    let records = s.list_settings().await.unwrap();
    assert!(
        records.windows(2).all(|w| w[0].name < w[1].name),
        "sorted by name"
    );
}

pub async fn settings_change_all_or_nothing_by_compare_and_set(s: &dyn Store) {
    let initial = [
        ("x".to_string(), "1".to_string()),
        ("y".to_string(), "2".to_string()),
    ];
    assert!(s.seed_settings(&initial, T0).await.unwrap());
    // Update, insert and delete in one change.
    let change = [
        setting("x", Some("1"), Some("10")),
        setting("z", None, Some("3")),
        setting("y", Some("2"), None),
    ];
    assert!(s.change_settings(&change, T0 + 5).await.unwrap());
    let stored = settings_map(s).await;
    assert_eq!(stored.get("x").map(String::as_str), Some("10"));
    assert_eq!(stored.get("z").map(String::as_str), Some("3"));
    assert!(!stored.contains_key("y"));
    let x = s
        .list_settings()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.name == "x")
        .unwrap();
    assert_eq!(x.updated_at, T0 + 5);
    // A stale `old` anywhere refuses the whole change: the first step is rolled back.
    for stale in [
        setting("z", Some("999"), Some("4")),
        setting("z", None, Some("4")),
        setting("y", Some("2"), Some("5")),
        setting("y", Some("2"), None),
        setting("x", None, None),
    ] {
        let change = [setting("x", Some("10"), Some("11")), stale.clone()];
        assert!(
            !s.change_settings(&change, T0 + 6).await.unwrap(),
            "{stale:?}"
        );
        assert_eq!(settings_map(s).await, stored, "{stale:?} changed nothing");
    }
    // "Still absent" holds when it is absent.
    assert!(s
        .change_settings(
            &[
                setting("y", None, None),
                setting("x", Some("10"), Some("11"))
            ],
            T0 + 7
        )
        .await
        .unwrap());
    assert_eq!(
        settings_map(s).await.get("x").map(String::as_str),
        Some("11")
    );
}

pub async fn concurrent_settings_changes_succeed_once(s: &dyn Store) {
    assert!(s
        .seed_settings(&[("n".to_string(), "0".to_string())], T0)
        .await
        .unwrap());
    let attempts: Vec<[SettingChange; 1]> = (1..=8)
        .map(|i| [setting("n", Some("0"), Some(&i.to_string()))])
        .collect();
    let results = join_all(attempts.iter().map(|c| s.change_settings(c, T0 + 1))).await;
    let won = results
        .into_iter()
        .map(Result::unwrap)
        .filter(|&b| b)
        .count();
    assert_eq!(won, 1, "exactly one writer saw the old value");
}

/// Polls futures concurrently without pulling in an executor utility crate.
pub async fn join_all<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    use std::pin::Pin;
    use std::task::Poll;
    let mut pending: Vec<Option<Pin<Box<F>>>> =
        futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut out: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all_done = true;
        for (slot, result) in pending.iter_mut().zip(out.iter_mut()) {
            if let Some(fut) = slot {
                match fut.as_mut().poll(cx) {
                    Poll::Ready(v) => {
                        *result = Some(v);
                        *slot = None;
                    }
                    Poll::Pending => all_done = false,
                }
            }
        }
        if all_done {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("every future completed"))
        .collect()
}
