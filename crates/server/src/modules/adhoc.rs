//! XEP-0050 Ad-Hoc Commands, offering a few XEP-0133 Service Administration
//! commands to the accounts listed in the `admins` setting.
//!
//! Every command is a single stage: the first request gets the XEP-0133
//! form (`status='executing'`), the second carries it back filled in and
//! gets `status='completed'`. No session state is kept on the server: the
//! submitted form holds everything a command needs, so the `sessionid` is
//! only generated and echoed, and any session id is accepted. A first
//! request that already carries a submitted form is run at once, as admin
//! scripts commonly do.
//!
//! Error conditions (XEP-0133 section 5 and RFC 6120 8.3.3):
//! - not an admin: `forbidden`; unknown command node: `item-not-found`;
//! - a missing or malformed field, a JID that is not a bare account JID of
//!   this domain, an action other than execute/complete/cancel:
//!   `bad-request`;
//! - `password-verify` differing from `password`, or a password SASLprep
//!   rejects (empty, prohibited characters): `not-acceptable`, since the
//!   request is well-formed but its value is refused;
//! - adding an account that exists: `conflict`; changing the password of
//!   or deleting an account that does not: `item-not-found`.

use super::{IqRequest, IqResult, Session};
use crate::node::Node;
use jid::BareJid;
use minidom::Element;
use tributary_proto::error::{StanzaErrorCondition, StreamError, StreamErrorCondition};
use tributary_proto::ns;
use tributary_proto::scram::Credentials;
use tributary_proto::stanza::{element, set_attr, text_element};
use tributary_store::StoreError;

type Condition = StanzaErrorCondition;

/// Disco features of this module.
pub const FEATURES: &[&str] = &[ns::COMMANDS];

const ADD_USER: &str = "http://jabber.org/protocol/admin#add-user";
const DELETE_USER: &str = "http://jabber.org/protocol/admin#delete-user";
const CHANGE_PASSWORD: &str = "http://jabber.org/protocol/admin#change-user-password";
/// XEP-0133 section 4.20's node for "Get List of Online Users".
const ONLINE_USERS: &str = "http://jabber.org/protocol/admin#get-online-users-list";
/// The name some servers and scripts use for the same command; accepted
/// when executing, never advertised.
const ONLINE_USERS_ALIAS: &str = "http://jabber.org/protocol/admin#get-online-users";

/// The administration commands this server implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    AddUser,
    DeleteUser,
    ChangePassword,
    OnlineUsers,
}

impl Command {
    const ALL: [Command; 4] = [
        Command::AddUser,
        Command::DeleteUser,
        Command::ChangePassword,
        Command::OnlineUsers,
    ];

    fn node(self) -> &'static str {
        match self {
            Command::AddUser => ADD_USER,
            Command::DeleteUser => DELETE_USER,
            Command::ChangePassword => CHANGE_PASSWORD,
            Command::OnlineUsers => ONLINE_USERS,
        }
    }

    /// The names XEP-0133 gives the use cases.
    fn name(self) -> &'static str {
        match self {
            Command::AddUser => "Add User",
            Command::DeleteUser => "Delete User",
            Command::ChangePassword => "Change User Password",
            Command::OnlineUsers => "Get List of Online Users",
        }
    }

    fn from_node(node: &str) -> Option<Command> {
        if node == ONLINE_USERS_ALIAS {
            return Some(Command::OnlineUsers);
        }
        Command::ALL.into_iter().find(|c| c.node() == node)
    }

    /// Title, instructions and fields of the command's XEP-0133 form.
    fn form_spec(self) -> (&'static str, &'static str, &'static [Field]) {
        match self {
            Command::AddUser => (
                "Adding a User",
                "Fill out this form to add a user.",
                ADD_USER_FIELDS,
            ),
            Command::DeleteUser => (
                "Deleting a User",
                "Fill out this form to delete a user.",
                DELETE_USER_FIELDS,
            ),
            Command::ChangePassword => (
                "Changing a User Password",
                "Fill out this form to change a user's password.",
                CHANGE_PASSWORD_FIELDS,
            ),
            Command::OnlineUsers => (
                "Requesting List of Online Users",
                "Fill out this form to request the online users of this service.",
                ONLINE_USERS_FIELDS,
            ),
        }
    }

    /// The XEP-0133 form for this command (`<x type='form'/>`).
    fn form(self) -> Element {
        let (title, instructions, fields) = self.form_spec();
        let mut x = element("x", ns::DATA_FORMS, &[("type", "form")]);
        x.append_child(text_element("title", ns::DATA_FORMS, title));
        x.append_child(text_element("instructions", ns::DATA_FORMS, instructions));
        x.append_child(form_type_field());
        for f in fields {
            x.append_child(f.render());
        }
        x
    }
}

// The fields of XEP-0133 sections 4.1, 4.2, 4.7 and 4.20. The password is
// marked required although XEP-0133 does not, since an account cannot be
// created without one; the verification stays optional (see new_password).
const ADD_USER_FIELDS: &[Field] = &[
    Field::new(
        "accountjid",
        "jid-single",
        "The Jabber ID for the account to be added",
    )
    .required(),
    Field::new("password", "text-private", "The password for this account").required(),
    Field::new("password-verify", "text-private", "Retype password"),
];
const DELETE_USER_FIELDS: &[Field] =
    &[Field::new("accountjids", "jid-multi", "The Jabber ID(s) to delete").required()];
const CHANGE_PASSWORD_FIELDS: &[Field] = &[
    Field::new("accountjid", "jid-single", "The Jabber ID for this account").required(),
    Field::new("password", "text-private", "The password for this account").required(),
];
const ONLINE_USERS_FIELDS: &[Field] = &[Field::new(
    "max_items",
    "list-single",
    "Maximum number of items to show",
)
.options(MAX_ITEMS_OPTIONS)];

/// The `max_items` choices of XEP-0133 (label, value).
const MAX_ITEMS_OPTIONS: &[(&str, &str)] = &[
    ("25", "25"),
    ("50", "50"),
    ("75", "75"),
    ("100", "100"),
    ("150", "150"),
    ("200", "200"),
    ("None", "none"),
];

/// One field of a form we send.
struct Field {
    var: &'static str,
    kind: &'static str,
    label: &'static str,
    required: bool,
    options: &'static [(&'static str, &'static str)],
}

impl Field {
    const fn new(var: &'static str, kind: &'static str, label: &'static str) -> Field {
        Field {
            var,
            kind,
            label,
            required: false,
            options: &[],
        }
    }

    const fn required(mut self) -> Field {
        self.required = true;
        self
    }

    const fn options(mut self, options: &'static [(&'static str, &'static str)]) -> Field {
        self.options = options;
        self
    }

    fn render(&self) -> Element {
        let mut f = element(
            "field",
            ns::DATA_FORMS,
            &[
                ("type", self.kind),
                ("var", self.var),
                ("label", self.label),
            ],
        );
        if self.required {
            f.append_child(Element::bare("required", ns::DATA_FORMS));
        }
        for (label, value) in self.options {
            let mut o = element("option", ns::DATA_FORMS, &[("label", label)]);
            o.append_child(text_element("value", ns::DATA_FORMS, value));
            f.append_child(o);
        }
        f
    }
}

/// The hidden field that scopes the form's vars to XEP-0133 (XEP-0068).
fn form_type_field() -> Element {
    let mut f = element(
        "field",
        ns::DATA_FORMS,
        &[("type", "hidden"), ("var", "FORM_TYPE")],
    );
    f.append_child(text_element("value", ns::DATA_FORMS, ns::ADMIN));
    f
}

/// The commands `s` may run, as (node, name), for disco (XEP-0050 2.2).
/// Empty for anyone who is not an admin, so that they see no commands.
pub fn commands_for(node: &Node, s: &Session) -> Vec<(&'static str, &'static str)> {
    if !is_admin(node, s) {
        return Vec::new();
    }
    Command::ALL.iter().map(|c| (c.node(), c.name())).collect()
}

fn is_admin(node: &Node, s: &Session) -> bool {
    node.config.is_admin(&s.bare.to_string())
}

pub async fn handle(node: &Node, s: &mut Session, req: &IqRequest<'_>) -> IqResult {
    // Commands are run with `set` only (XEP-0050 section 3).
    if !req.is_set() || req.payload.name() != "command" {
        return Err(Condition::BadRequest);
    }
    let at = req.payload.attr("node").ok_or(Condition::BadRequest)?;
    let command = Command::from_node(at).ok_or(Condition::ItemNotFound)?;
    // Checked before anything in the request is looked at further, so a
    // non-admin learns nothing beyond the (public) command names.
    if !is_admin(node, s) {
        return Err(Condition::Forbidden);
    }
    let step = step(req.payload)?;
    let sessionid = match req.payload.attr("sessionid") {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => new_session_id(),
    };
    let reply = match step {
        Step::Cancel => command_element(at, &sessionid, "canceled"),
        Step::ShowForm => executing(at, &sessionid, command.form()),
        Step::Run(fields) => {
            let done = run(node, s, command, &fields).await?;
            completed(at, &sessionid, &done.note, done.result)
        }
    };
    Ok(Some(reply))
}

/// What a `<command/>` request asks for.
#[derive(Debug, PartialEq)]
enum Step {
    Cancel,
    /// Send the command's form.
    ShowForm,
    /// Perform the command with the submitted values.
    Run(Fields),
}

/// Reads the action and the submitted form of a `<command/>`.
fn step(command: &Element) -> Result<Step, Condition> {
    // XEP-0050: no action means "execute". Our commands are single-stage
    // and offer only "complete", so "next" and "prev" are bad actions.
    let action = command.attr("action").unwrap_or("execute");
    match action {
        "cancel" => return Ok(Step::Cancel),
        "execute" | "complete" => {}
        _ => return Err(Condition::BadRequest),
    }
    let Some(form) = command.get_child("x", ns::DATA_FORMS) else {
        // "complete" without a form runs the command with no values (only
        // get-online-users has no required field); "execute" asks for it.
        return Ok(if action == "complete" {
            Step::Run(Fields::default())
        } else {
            Step::ShowForm
        });
    };
    match form.attr("type") {
        Some("submit") => Ok(Step::Run(Fields::parse(form)?)),
        // XEP-0004: submitting a form of type "cancel" abandons it.
        Some("cancel") => Ok(Step::Cancel),
        _ => Err(Condition::BadRequest),
    }
}

/// The values of a submitted data form, by field var.
#[derive(Debug, Default, PartialEq)]
struct Fields(Vec<(String, Vec<String>)>);

impl Fields {
    /// Parses `<x type='submit'/>`. A field without a var, a var given
    /// twice (XEP-0004 requires them unique) or a FORM_TYPE other than
    /// XEP-0133's is refused; a missing FORM_TYPE is tolerated because
    /// hand-written scripts often leave it out.
    fn parse(x: &Element) -> Result<Fields, Condition> {
        let mut fields: Vec<(String, Vec<String>)> = Vec::new();
        for f in x.children().filter(|c| c.is("field", ns::DATA_FORMS)) {
            let var = f.attr("var").ok_or(Condition::BadRequest)?;
            if fields.iter().any(|(v, _)| v == var) {
                return Err(Condition::BadRequest);
            }
            let values = f
                .children()
                .filter(|c| c.is("value", ns::DATA_FORMS))
                .map(Element::text)
                .collect();
            fields.push((var.to_owned(), values));
        }
        let form = Fields(fields);
        match form.single("FORM_TYPE")? {
            None => Ok(form),
            Some(t) if t == ns::ADMIN => Ok(form),
            Some(_) => Err(Condition::BadRequest),
        }
    }

    /// Every value of a field; none when the field is absent.
    fn values(&self, var: &str) -> &[String] {
        self.0
            .iter()
            .find(|(v, _)| v == var)
            .map(|(_, values)| values.as_slice())
            .unwrap_or_default()
    }

    /// The value of a single-valued field; more than one is malformed.
    fn single(&self, var: &str) -> Result<Option<&str>, Condition> {
        match self.values(var) {
            [] => Ok(None),
            [one] => Ok(Some(one.as_str())),
            _ => Err(Condition::BadRequest),
        }
    }

    /// A single-valued field that must be present and non-empty.
    fn required(&self, var: &str) -> Result<&str, Condition> {
        match self.single(var)? {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(Condition::BadRequest),
        }
    }
}

/// The store key of an account JID on this node: its nodeprep'd local
/// part. A full JID, a domain-only JID, or another domain is refused.
fn account_local(value: &str, domain: &str) -> Result<String, Condition> {
    let jid = BareJid::new(value.trim()).map_err(|_| Condition::BadRequest)?;
    if jid.domain().as_str() != domain {
        return Err(Condition::BadRequest);
    }
    jid.node()
        .map(|n| n.as_str().to_owned())
        .ok_or(Condition::BadRequest)
}

/// The new password from `password`, checked against `password-verify`
/// when the form has one (optional, so one-shot scripts need not repeat it).
fn new_password(fields: &Fields) -> Result<&str, Condition> {
    let password = fields.required("password")?;
    match fields.single("password-verify")? {
        Some(again) if again != password => Err(Condition::NotAcceptable),
        _ => Ok(password),
    }
}

/// `max_items`: absent, empty or "none" means no limit.
fn max_items(fields: &Fields) -> Result<Option<usize>, Condition> {
    match fields.single("max_items")? {
        None | Some("") | Some("none") => Ok(None),
        Some(n) => match n.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(Some(n)),
            _ => Err(Condition::BadRequest),
        },
    }
}

/// The bare JIDs of the online users, each once, sorted, at most `max`;
/// and how many there are in all. `sessions` is (user, resource) as
/// [`crate::router::Router::online`] returns it.
fn online_bare(
    sessions: &[(String, String)],
    domain: &str,
    max: Option<usize>,
) -> (Vec<String>, usize) {
    let mut users: Vec<&str> = sessions.iter().map(|(u, _)| u.as_str()).collect();
    users.sort_unstable();
    users.dedup();
    let total = users.len();
    let shown = users
        .into_iter()
        .take(max.unwrap_or(usize::MAX))
        .map(|u| format!("{u}@{domain}"))
        .collect();
    (shown, total)
}

/// What a completed command reports.
struct Done {
    note: String,
    result: Option<Element>,
}

impl Done {
    fn note(note: String) -> Done {
        Done { note, result: None }
    }
}

async fn run(
    node: &Node,
    s: &Session,
    command: Command,
    fields: &Fields,
) -> Result<Done, Condition> {
    let domain = node.domain();
    let admin = &s.bare;
    match command {
        Command::AddUser => {
            let local = account_local(fields.required("accountjid")?, domain)?;
            let creds = derive(new_password(fields)?).await?;
            match node.store.create_account(&local, &creds).await {
                Ok(()) => {}
                Err(StoreError::AccountExists) => return Err(Condition::Conflict),
                Err(e) => return Err(internal("create account", e)),
            }
            tracing::info!(%admin, account = %local, "admin command: account added");
            Ok(Done::note(format!("Account {local}@{domain} added.")))
        }
        Command::ChangePassword => {
            let local = account_local(fields.required("accountjid")?, domain)?;
            let creds = derive(new_password(fields)?).await?;
            match node.store.set_credentials(&local, &creds).await {
                Ok(()) => {}
                Err(StoreError::NoAccount) => return Err(Condition::ItemNotFound),
                Err(e) => return Err(internal("set credentials", e)),
            }
            tracing::info!(%admin, account = %local, "admin command: password changed");
            Ok(Done::note(format!("Password of {local}@{domain} changed.")))
        }
        Command::DeleteUser => {
            let mut locals = fields
                .values("accountjids")
                .iter()
                .filter(|v| !v.trim().is_empty())
                .map(|v| account_local(v, domain))
                .collect::<Result<Vec<_>, _>>()?;
            locals.sort_unstable();
            locals.dedup();
            if locals.is_empty() {
                return Err(Condition::BadRequest);
            }
            // All or nothing as far as can be checked up front: one unknown
            // JID (likely a typo) fails the command before anything is gone.
            for local in &locals {
                match node.store.account_exists(local).await {
                    Ok(true) => {}
                    Ok(false) => return Err(Condition::ItemNotFound),
                    Err(e) => return Err(internal("look up account", e)),
                }
            }
            for local in &locals {
                match node.store.delete_account(local).await {
                    // Gone meanwhile: the goal is reached all the same.
                    Ok(()) | Err(StoreError::NoAccount) => {}
                    Err(e) => return Err(internal("delete account", e)),
                }
                // After the deletion, so a session cannot log in again
                // between the two steps; XEP-0133 asks that live sessions end.
                node.router.close_user(
                    local,
                    StreamError::with_text(StreamErrorCondition::NotAuthorized, "account deleted"),
                );
                tracing::info!(%admin, account = %local, "admin command: account deleted");
            }
            let list: Vec<String> = locals.iter().map(|l| format!("{l}@{domain}")).collect();
            Ok(Done::note(format!("Deleted: {}.", list.join(", "))))
        }
        Command::OnlineUsers => {
            let max = max_items(fields)?;
            let (jids, total) = online_bare(&node.router.online(), domain, max);
            let note = if jids.len() < total {
                format!("Showing {} of {total} online users.", jids.len())
            } else {
                format!("{total} online users.")
            };
            Ok(Done {
                note,
                result: Some(online_result(&jids)),
            })
        }
    }
}

/// Derives SCRAM keys off the async workers: thousands of hash rounds
/// would otherwise stall every other connection on this worker thread.
async fn derive(password: &str) -> Result<Credentials, Condition> {
    let password = password.to_owned();
    match tokio::task::spawn_blocking(move || Credentials::new(&password)).await {
        Ok(Ok(creds)) => Ok(creds),
        Ok(Err(_)) => Err(Condition::NotAcceptable),
        Err(e) => Err(internal("derive credentials", e)),
    }
}

fn internal(what: &str, e: impl std::fmt::Display) -> Condition {
    tracing::warn!("admin command: cannot {what}: {e}");
    Condition::InternalServerError
}

/// The get-online-users result form (XEP-0133 section 4.20).
fn online_result(jids: &[String]) -> Element {
    let mut x = element("x", ns::DATA_FORMS, &[("type", "result")]);
    x.append_child(form_type_field());
    let mut f = element(
        "field",
        ns::DATA_FORMS,
        &[
            ("type", "jid-multi"),
            ("var", "onlineuserjids"),
            ("label", "The list of all online users"),
        ],
    );
    for j in jids {
        f.append_child(text_element("value", ns::DATA_FORMS, j));
    }
    x.append_child(f);
    x
}

/// A fresh XEP-0050 session id; random, since it is never looked up.
fn new_session_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn command_element(node: &str, sessionid: &str, status: &str) -> Element {
    element(
        "command",
        ns::COMMANDS,
        &[("node", node), ("sessionid", sessionid), ("status", status)],
    )
}

/// The first answer: the form, with "complete" as the only next action.
fn executing(node: &str, sessionid: &str, form: Element) -> Element {
    let mut c = command_element(node, sessionid, "executing");
    let mut actions = Element::bare("actions", ns::COMMANDS);
    set_attr(&mut actions, "execute", "complete");
    actions.append_child(Element::bare("complete", ns::COMMANDS));
    c.append_child(actions);
    c.append_child(form);
    c
}

/// The final answer; the note precedes any payload, as in XEP-0050's schema.
fn completed(node: &str, sessionid: &str, note: &str, result: Option<Element>) -> Element {
    let mut c = command_element(node, sessionid, "completed");
    let mut n = text_element("note", ns::COMMANDS, note);
    set_attr(&mut n, "type", "info");
    c.append_child(n);
    if let Some(r) = result {
        c.append_child(r);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::modules::{Session, Target};
    use crate::router::{BindRequest, Outbound};
    use jid::FullJid;
    use std::sync::Arc;
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    fn xml(s: &str) -> Element {
        s.parse().expect("test xml")
    }

    fn submit(fields: &str) -> String {
        format!("<x xmlns='jabber:x:data' type='submit'>{fields}</x>")
    }

    fn field(var: &str, values: &[&str]) -> String {
        let values: String = values
            .iter()
            .map(|v| format!("<value>{v}</value>"))
            .collect();
        format!("<field var='{var}'>{values}</field>")
    }

    fn command(attrs: &str, body: &str) -> Element {
        xml(&format!(
            "<command xmlns='http://jabber.org/protocol/commands' {attrs}>{body}</command>"
        ))
    }

    fn field_vars(form: &Element) -> Vec<(String, String)> {
        form.children()
            .filter(|c| c.is("field", ns::DATA_FORMS))
            .map(|f| {
                (
                    f.attr("var").unwrap_or_default().to_owned(),
                    f.attr("type").unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn command_nodes_round_trip() {
        for c in Command::ALL {
            assert_eq!(Command::from_node(c.node()), Some(c));
        }
        assert_eq!(
            Command::from_node(ONLINE_USERS_ALIAS),
            Some(Command::OnlineUsers)
        );
        assert_eq!(
            Command::from_node("http://jabber.org/protocol/admin#shutdown"),
            None
        );
    }

    #[test]
    fn forms_carry_form_type_and_xep_0133_fields() {
        let form = Command::AddUser.form();
        assert!(form.is("x", ns::DATA_FORMS));
        assert_eq!(form.attr("type"), Some("form"));
        let hidden = form
            .children()
            .find(|f| f.attr("var") == Some("FORM_TYPE"))
            .expect("FORM_TYPE");
        assert_eq!(hidden.attr("type"), Some("hidden"));
        assert_eq!(
            hidden
                .get_child("value", ns::DATA_FORMS)
                .map(Element::text)
                .as_deref(),
            Some(ns::ADMIN)
        );
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        assert_eq!(
            field_vars(&form),
            pairs(&[
                ("FORM_TYPE", "hidden"),
                ("accountjid", "jid-single"),
                ("password", "text-private"),
                ("password-verify", "text-private"),
            ])
        );
        let accountjid = form
            .children()
            .find(|f| f.attr("var") == Some("accountjid"))
            .expect("field");
        assert!(accountjid.has_child("required", ns::DATA_FORMS));
        assert_eq!(
            field_vars(&Command::DeleteUser.form()),
            pairs(&[("FORM_TYPE", "hidden"), ("accountjids", "jid-multi")])
        );
        assert_eq!(
            field_vars(&Command::ChangePassword.form()),
            pairs(&[
                ("FORM_TYPE", "hidden"),
                ("accountjid", "jid-single"),
                ("password", "text-private")
            ])
        );
        let online = Command::OnlineUsers.form();
        assert_eq!(
            field_vars(&online),
            pairs(&[("FORM_TYPE", "hidden"), ("max_items", "list-single")])
        );
        let max = online
            .children()
            .find(|f| f.attr("var") == Some("max_items"))
            .expect("field");
        let options: Vec<String> = max
            .children()
            .filter_map(|o| o.get_child("value", ns::DATA_FORMS).map(Element::text))
            .collect();
        assert_eq!(options, ["25", "50", "75", "100", "150", "200", "none"]);
    }

    #[test]
    fn steps_follow_action_and_form() {
        assert_eq!(step(&command("node='n'", "")), Ok(Step::ShowForm));
        assert_eq!(
            step(&command("node='n' action='execute'", "")),
            Ok(Step::ShowForm)
        );
        assert_eq!(
            step(&command("node='n' action='cancel'", "")),
            Ok(Step::Cancel)
        );
        assert_eq!(
            step(&command("node='n' action='complete'", "")),
            Ok(Step::Run(Fields::default()))
        );
        assert_eq!(
            step(&command("node='n' action='next'", "")),
            Err(Condition::BadRequest)
        );
        assert_eq!(
            step(&command("node='n' action='bogus'", "")),
            Err(Condition::BadRequest)
        );
        // One-shot: a submitted form on the first request runs it.
        let one_shot = command("node='n'", &submit(&field("accountjid", &["a@b"])));
        assert_eq!(
            step(&one_shot),
            Ok(Step::Run(Fields(vec![(
                "accountjid".into(),
                vec!["a@b".into()]
            )])))
        );
        let cancel_form = command(
            "node='n' action='complete'",
            "<x xmlns='jabber:x:data' type='cancel'/>",
        );
        assert_eq!(step(&cancel_form), Ok(Step::Cancel));
        let result_form = command(
            "node='n' action='complete'",
            "<x xmlns='jabber:x:data' type='result'/>",
        );
        assert_eq!(step(&result_form), Err(Condition::BadRequest));
    }

    #[test]
    fn fields_are_extracted_and_checked() {
        let x = xml(&submit(&format!(
            "<field type='hidden' var='FORM_TYPE'><value>{}</value></field>{}{}{}",
            ns::ADMIN,
            field("accountjids", &["a@example.org", "b@example.org"]),
            field("password", &["s3cret"]),
            field("empty", &[""]),
        )));
        let f = Fields::parse(&x).expect("parses");
        assert_eq!(f.values("accountjids"), ["a@example.org", "b@example.org"]);
        assert_eq!(f.single("password"), Ok(Some("s3cret")));
        assert_eq!(f.required("password"), Ok("s3cret"));
        assert_eq!(f.single("missing"), Ok(None));
        assert_eq!(f.required("missing"), Err(Condition::BadRequest));
        assert_eq!(f.required("empty"), Err(Condition::BadRequest));
        assert_eq!(f.single("accountjids"), Err(Condition::BadRequest));

        let duplicate = xml(&submit(&format!(
            "{}{}",
            field("a", &["1"]),
            field("a", &["2"])
        )));
        assert_eq!(Fields::parse(&duplicate), Err(Condition::BadRequest));
        let no_var = xml(&submit("<field><value>1</value></field>"));
        assert_eq!(Fields::parse(&no_var), Err(Condition::BadRequest));
        let other_type = xml(&submit(&field("FORM_TYPE", &["urn:example"])));
        assert_eq!(Fields::parse(&other_type), Err(Condition::BadRequest));
        // FORM_TYPE may be left out by scripts.
        assert!(Fields::parse(&xml(&submit(&field("a", &["1"])))).is_ok());
    }

    #[test]
    fn account_jids_must_be_bare_and_local() {
        assert_eq!(
            account_local("Juliet@example.org", "example.org"),
            Ok("juliet".into())
        );
        assert_eq!(
            account_local(" romeo@example.org\n", "example.org"),
            Ok("romeo".into())
        );
        assert_eq!(
            account_local("romeo@example.org/home", "example.org"),
            Err(Condition::BadRequest)
        );
        assert_eq!(
            account_local("example.org", "example.org"),
            Err(Condition::BadRequest)
        );
        assert_eq!(
            account_local("romeo@elsewhere.org", "example.org"),
            Err(Condition::BadRequest)
        );
        assert_eq!(
            account_local("a@b@c", "example.org"),
            Err(Condition::BadRequest)
        );
        assert_eq!(account_local("", "example.org"), Err(Condition::BadRequest));
    }

    #[test]
    fn password_and_verification() {
        let form = |fields: &str| Fields::parse(&xml(&submit(fields))).expect("parses");
        assert_eq!(new_password(&form(&field("password", &["pw"]))), Ok("pw"));
        let both = format!(
            "{}{}",
            field("password", &["pw"]),
            field("password-verify", &["pw"])
        );
        assert_eq!(new_password(&form(&both)), Ok("pw"));
        let differ = format!(
            "{}{}",
            field("password", &["pw"]),
            field("password-verify", &["px"])
        );
        assert_eq!(new_password(&form(&differ)), Err(Condition::NotAcceptable));
        assert_eq!(new_password(&form("")), Err(Condition::BadRequest));
    }

    #[test]
    fn max_items_values() {
        let form =
            |v: &str| Fields::parse(&xml(&submit(&field("max_items", &[v])))).expect("parses");
        assert_eq!(max_items(&Fields::default()), Ok(None));
        assert_eq!(max_items(&form("none")), Ok(None));
        assert_eq!(max_items(&form("")), Ok(None));
        assert_eq!(max_items(&form("25")), Ok(Some(25)));
        assert_eq!(max_items(&form("0")), Err(Condition::BadRequest));
        assert_eq!(max_items(&form("lots")), Err(Condition::BadRequest));
    }

    #[test]
    fn online_users_are_bare_unique_and_limited() {
        let s = |u: &str, r: &str| (u.to_owned(), r.to_owned());
        let sessions = [
            s("bob", "a"),
            s("alice", "phone"),
            s("alice", "laptop"),
            s("carol", "x"),
        ];
        let (all, total) = online_bare(&sessions, "example.org", None);
        assert_eq!(
            all,
            ["alice@example.org", "bob@example.org", "carol@example.org"]
        );
        assert_eq!(total, 3);
        let (some, total) = online_bare(&sessions, "example.org", Some(2));
        assert_eq!(some, ["alice@example.org", "bob@example.org"]);
        assert_eq!(total, 3);
    }

    #[test]
    fn replies_have_xep_0050_shape() {
        let e = executing(ADD_USER, "s1", Command::AddUser.form());
        assert!(e.is("command", ns::COMMANDS));
        assert_eq!(e.attr("status"), Some("executing"));
        assert_eq!(e.attr("sessionid"), Some("s1"));
        assert_eq!(e.attr("node"), Some(ADD_USER));
        let actions = e.get_child("actions", ns::COMMANDS).expect("actions");
        assert_eq!(actions.attr("execute"), Some("complete"));
        assert!(actions.has_child("complete", ns::COMMANDS));
        assert!(e.has_child("x", ns::DATA_FORMS));

        let c = completed(
            ONLINE_USERS,
            "s2",
            "2 online users.",
            Some(online_result(&["a@b".into()])),
        );
        assert_eq!(c.attr("status"), Some("completed"));
        let children: Vec<&str> = c.children().map(Element::name).collect();
        assert_eq!(children, ["note", "x"]);
        let note = c.get_child("note", ns::COMMANDS).expect("note");
        assert_eq!(note.attr("type"), Some("info"));
        let x = c.get_child("x", ns::DATA_FORMS).expect("result");
        assert_eq!(x.attr("type"), Some("result"));
        let list = x
            .children()
            .find(|f| f.attr("var") == Some("onlineuserjids"))
            .expect("field");
        assert_eq!(
            list.children().map(Element::text).collect::<Vec<_>>(),
            ["a@b"]
        );

        assert_ne!(new_session_id(), new_session_id());
    }

    // The whole flow against a real node: store, router and admin check.

    /// A TLS config is required by `Node` but never used here.
    #[derive(Debug)]
    struct NoCert;

    impl rustls::server::ResolvesServerCert for NoCert {
        fn resolve(
            &self,
            _: rustls::server::ClientHello<'_>,
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            None
        }
    }

    async fn test_node(dir: &std::path::Path) -> Node {
        let store = tributary_store::SqliteStore::open(&dir.join("db.sqlite"))
            .await
            .expect("store");
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("tls versions")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(NoCert));
        let config = Config {
            domain: "localhost".into(),
            admins: vec!["admin@localhost".into()],
            ..Config::default()
        };
        Node::new(config, Arc::new(store), Arc::new(tls))
    }

    fn session(jid: &str) -> Session {
        Session::new(jid.parse::<FullJid>().expect("jid"), 1)
    }

    async fn exec(node: &Node, s: &mut Session, cmd: &Element) -> IqResult {
        let mut iq = xml("<iq xmlns='jabber:client' type='set' id='c' to='localhost'/>");
        iq.append_child(cmd.clone());
        let payload = iq.children().next().expect("payload");
        let req = IqRequest {
            iq: &iq,
            payload,
            target: Target::Server,
            kind: "set",
        };
        handle(node, s, &req).await
    }

    fn run_cmd(node: &str, fields: &str) -> Element {
        command(
            &format!("node='{node}' action='complete' sessionid='s'"),
            &submit(fields),
        )
    }

    #[tokio::test]
    async fn admin_commands_end_to_end() {
        let dir = std::env::temp_dir().join(format!(
            "tributary-adhoc-test-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let node = test_node(&dir).await;
        let mut admin = session("admin@localhost/console");
        let mut user = session("juliet@localhost/balcony");

        assert_eq!(commands_for(&node, &admin).len(), 4);
        assert!(commands_for(&node, &user).is_empty());
        let ask = command(&format!("node='{ADD_USER}' action='execute'"), "");
        assert_eq!(
            exec(&node, &mut user, &ask).await,
            Err(Condition::Forbidden)
        );
        let unknown = command("node='http://jabber.org/protocol/admin#shutdown'", "");
        assert_eq!(
            exec(&node, &mut admin, &unknown).await,
            Err(Condition::ItemNotFound)
        );

        // Two steps: the form, then the submission with its session id.
        let form = exec(&node, &mut admin, &ask)
            .await
            .expect("ok")
            .expect("payload");
        assert_eq!(form.attr("status"), Some("executing"));
        let sid = form.attr("sessionid").expect("sessionid").to_owned();
        let add = format!(
            "{}{}{}",
            field("accountjid", &["Juliet@localhost"]),
            field("password", &["R0m30"]),
            field("password-verify", &["R0m30"])
        );
        let submitted = command(
            &format!("node='{ADD_USER}' action='complete' sessionid='{sid}'"),
            &submit(&add),
        );
        let done = exec(&node, &mut admin, &submitted)
            .await
            .expect("ok")
            .expect("payload");
        assert_eq!(done.attr("status"), Some("completed"));
        assert_eq!(done.attr("sessionid"), Some(sid.as_str()));
        let creds = node
            .store
            .credentials("juliet")
            .await
            .expect("store")
            .expect("account");
        assert!(creds.verify_prepped_password(b"R0m30"));
        assert_eq!(
            exec(&node, &mut admin, &run_cmd(ADD_USER, &add)).await,
            Err(Condition::Conflict)
        );
        let mismatch = format!(
            "{}{}{}",
            field("accountjid", &["romeo@localhost"]),
            field("password", &["a"]),
            field("password-verify", &["b"])
        );
        assert_eq!(
            exec(&node, &mut admin, &run_cmd(ADD_USER, &mismatch)).await,
            Err(Condition::NotAcceptable)
        );
        assert!(!node.store.account_exists("romeo").await.expect("store"));

        let change = format!(
            "{}{}",
            field("accountjid", &["juliet@localhost"]),
            field("password", &["V3r0n4"])
        );
        exec(&node, &mut admin, &run_cmd(CHANGE_PASSWORD, &change))
            .await
            .expect("changed");
        let creds = node
            .store
            .credentials("juliet")
            .await
            .expect("store")
            .expect("account");
        assert!(creds.verify_prepped_password(b"V3r0n4"));
        let nobody = format!(
            "{}{}",
            field("accountjid", &["nobody@localhost"]),
            field("password", &["x"])
        );
        assert_eq!(
            exec(&node, &mut admin, &run_cmd(CHANGE_PASSWORD, &nobody)).await,
            Err(Condition::ItemNotFound)
        );

        // Juliet online twice: listed once, then closed when deleted.
        let bare = "juliet@localhost".parse().expect("jid");
        let mut queues = Vec::new();
        for (i, r) in ["balcony", "garden"].into_iter().enumerate() {
            let (tx, rx) = mpsc::channel(4);
            let bind = BindRequest {
                user: &bare,
                requested: Some(r),
                tx,
                kill: CancellationToken::new(),
                max_resources: 5,
            };
            node.router.bind(bind, i as u64).expect("bound");
            queues.push(rx);
        }
        let list = exec(&node, &mut admin, &run_cmd(ONLINE_USERS_ALIAS, ""))
            .await
            .expect("ok")
            .expect("payload");
        let x = list.get_child("x", ns::DATA_FORMS).expect("result form");
        let jids: Vec<String> = x
            .children()
            .filter(|f| f.attr("var") == Some("onlineuserjids"))
            .flat_map(|f| f.children().map(Element::text))
            .collect();
        assert_eq!(jids, ["juliet@localhost"]);

        let missing = field("accountjids", &["juliet@localhost", "nobody@localhost"]);
        assert_eq!(
            exec(&node, &mut admin, &run_cmd(DELETE_USER, &missing)).await,
            Err(Condition::ItemNotFound)
        );
        assert!(
            node.store.account_exists("juliet").await.expect("store"),
            "nothing deleted"
        );
        let delete = field("accountjids", &["juliet@localhost"]);
        exec(&node, &mut admin, &run_cmd(DELETE_USER, &delete))
            .await
            .expect("deleted");
        assert!(!node.store.account_exists("juliet").await.expect("store"));
        for rx in &mut queues {
            assert!(matches!(
                rx.try_recv(),
                Ok(Outbound::Close(e)) if e.condition == StreamErrorCondition::NotAuthorized
            ));
        }

        let cancel = command(
            &format!("node='{DELETE_USER}' action='cancel' sessionid='z'"),
            "",
        );
        let canceled = exec(&node, &mut admin, &cancel)
            .await
            .expect("ok")
            .expect("payload");
        assert_eq!(canceled.attr("status"), Some("canceled"));
        assert_eq!(canceled.attr("sessionid"), Some("z"));

        let _ = std::fs::remove_dir_all(&dir);
    }
}
