//! A deterministic model test of the commit protocol: two participants (in-
//! memory replicas running the real state machine), a coordinator (the
//! portal's [`run`] and [`finish`]) and recovery from either participant's
//! side ([`recover`]). A fault is injected at every message, and at every
//! pair of messages: the request lost, the answer lost, the request
//! delivered late (after recovery had its turn), the sender dying before
//! or after it sent, or a leader's recovery running to its end just before
//! the message arrives (a slow portal racing recovery). Every run must end with both participants committed
//! or both aborted, no intent left, stock moved exactly when committed, and
//! the caller never told "committed" of an aborted transaction or
//! "aborted" of a committed one.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::*;
use crate::command::{Check, Effect, RowKey};
use crate::records::shop::{decode_record, encode_record, OrderLine, OrderRecord, ProductRecord};
use crate::state::testing::Replica;
use crate::state::txn::{TxnRecord, TxnState};

/// What happens to one message.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// Lost on the way: not applied, no answer.
    LostRequest,
    /// The shard cannot be reached, and the sender knows it was not
    /// applied (no leader, connection refused).
    Unreachable,
    /// Applied, but the answer is lost.
    LostReply,
    /// Held in the network and delivered after recovery ran.
    Late,
    /// The sender dies here, after sending or before; nothing it sends
    /// afterwards arrives.
    Crash { sent: bool },
    /// Before this message arrives, a leader's recovery from this side
    /// runs to its end (if that side's part is prepared): the race of a
    /// slow portal with recovery.
    RecoveryFirst(Shard),
}

const FAULTS: [Fault; 8] = [
    Fault::LostRequest,
    Fault::Unreachable,
    Fault::LostReply,
    Fault::Late,
    Fault::Crash { sent: false },
    Fault::Crash { sent: true },
    Fault::RecoveryFirst(Shard::Even),
    Fault::RecoveryFirst(Shard::Odd),
];

/// The two shards and the network between them and the senders.
struct World {
    replicas: BTreeMap<Shard, Replica>,
    /// Messages sent so far (the step a fault is keyed by).
    step: usize,
    faults: BTreeMap<usize, Fault>,
    /// The current sender has died.
    crashed: bool,
    late: Vec<(Shard, Command)>,
    clock: u64,
    /// A recovery racing the sender is running: its messages arrive.
    racing: bool,
    /// What a reader would have learned from the records after each
    /// message ([`settled_by`]), where they fixed an outcome.
    settled: Vec<Outcome>,
    /// Each shard's record as it stood when the shard forgot it.
    forgotten: BTreeMap<Shard, TxnState>,
}

struct Network(Mutex<World>);

impl World {
    fn deliver(&mut self, shard: Shard, mut command: Command) -> CommandResult {
        self.clock += 1;
        command.stamp(self.clock);
        let result = self.replicas.get_mut(&shard).expect("two shards").apply(command);
        let records = Shard::ALL.map(|shard| self.record(shard, ID));
        self.settled.extend(settled_by([records[0].as_ref(), records[1].as_ref()]));
        result
    }

    fn record(&self, shard: Shard, id: TxnId) -> Option<TxnState> {
        let row = self.replicas[&shard].rows.get(&RowKey::Txn(id))?;
        Some(decode_record::<TxnRecord>(&row.value).expect("a transaction record").state)
    }

    /// Minutes later: each shard's leader forgets its finished record,
    /// unless the other shard holds its part prepared ([`may_forget`]), as
    /// housekeeping's `PruneTxns` does.
    fn forget_finished(&mut self) {
        for shard in Shard::ALL {
            let other = self.record(shard.other(), ID);
            match self.record(shard, ID) {
                Some(state @ (TxnState::Committed | TxnState::Aborted(_))) if may_forget(other.as_ref()) => {
                    self.forget(shard, state);
                }
                _ => {}
            }
        }
    }

    /// `shard` forgets its record, whatever the other shard holds.
    fn forget(&mut self, shard: Shard, state: TxnState) {
        let before_ms = self.clock + 1;
        self.deliver(shard, Command::PruneTxns { before_ms });
        assert_eq!(self.record(shard, ID), None, "PruneTxns forgot the record");
        self.forgotten.insert(shard, state);
    }

    /// `shard`'s record, or the one it forgot.
    fn last_record(&self, shard: Shard) -> Option<TxnState> {
        self.record(shard, ID).or_else(|| self.forgotten.get(&shard).cloned())
    }

    fn prepared(&self, shard: Shard, id: TxnId) -> bool {
        matches!(self.record(shard, id), Some(TxnState::Prepared { .. }))
    }

    fn stock(&self, pid: u64) -> u64 {
        let row = &self.replicas[&Shard::of_id(pid)].rows[&RowKey::Product(pid)];
        decode_record::<ProductRecord>(&row.value).expect("a product").quantity
    }
}

type Answer<'a> = std::pin::Pin<Box<dyn Future<Output = Result<CommandResult, NoAnswer>> + Send + 'a>>;

impl Participants for Network {
    fn send(&self, shard: Shard, command: Command) -> impl Future<Output = Result<CommandResult, NoAnswer>> + Send {
        // Boxed: a racing recovery sends through here too.
        let answer: Answer<'_> = Box::pin(async move {
            let race = {
                let mut world = self.0.lock().expect("not poisoned");
                if world.racing {
                    return Ok(world.deliver(shard, command));
                }
                match world.faults.get(&world.step).copied() {
                    Some(Fault::RecoveryFirst(side)) if world.prepared(side, ID) => {
                        world.racing = true;
                        true
                    }
                    _ => false,
                }
            };
            if race {
                let _ = recover(self, ID).await;
                self.0.lock().expect("not poisoned").racing = false;
            }
            self.0.lock().expect("not poisoned").message(shard, command)
        });
        answer
    }
}

impl World {
    /// Message number `self.step`, from the current sender.
    fn message(&mut self, shard: Shard, command: Command) -> Result<CommandResult, NoAnswer> {
        let step = self.step;
        self.step += 1;
        let lost = |maybe_applied| Err(NoAnswer { detail: format!("message {step} lost"), maybe_applied });
        match (self.crashed, self.faults.get(&step).copied()) {
            (true, _) => Err(NoAnswer { detail: "the sender died".into(), maybe_applied: false }),
            (false, None | Some(Fault::RecoveryFirst(_))) => Ok(self.deliver(shard, command)),
            (false, Some(Fault::LostRequest)) => lost(true),
            (false, Some(Fault::Unreachable)) => lost(false),
            (false, Some(Fault::LostReply)) => {
                self.deliver(shard, command);
                lost(true)
            }
            (false, Some(Fault::Late)) => {
                self.late.push((shard, command));
                lost(true)
            }
            (false, Some(Fault::Crash { sent })) => {
                if sent {
                    self.deliver(shard, command);
                }
                self.crashed = true;
                lost(sent)
            }
        }
    }
}

/// How the order's prices are taken.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Pricing {
    /// The caller read them and each part checks them (`ProductPrice`).
    Read,
    /// Each shard takes its products' prices in its prepare: the even shard
    /// prices the order's even line (`PriceOrder`), the odd one quotes its
    /// line's (`QuotePrice`), and the even one fills it in at commit.
    Quoted,
}

const PRICINGS: [Pricing; 2] = [Pricing::Read, Pricing::Quoted];

/// How the participants' checks come out.
#[derive(Clone, Copy, Debug)]
enum Scenario {
    /// Both prepare.
    BothPrepare,
    /// The odd shard refuses and records why (too little stock).
    OddRefuses,
    /// The odd shard refuses without a record (a backup fence holds).
    OddFenced,
}

const ID: TxnId = TxnId(42);
const OID: u64 = 10;

fn product(quantity: u64, price: f64) -> crate::command::Row {
    let record = ProductRecord { name: "p".into(), price, quantity, extra: "{}".into() };
    crate::command::Row { version: 1, value: encode_record(&record) }
}

/// The unit prices of products 1 (odd) and 2 (even).
const PRICES: [(u64, f64); 2] = [(1, 4.0), (2, 2.5)];

/// Order 10 (even) of product 2 (even, 2 units) and product 1 (odd, 3
/// units, or 9 where the odd shard must refuse).
fn world(scenario: Scenario, pricing: Pricing) -> (World, [(Shard, TxnPart); 2]) {
    let mut replicas = BTreeMap::from([(Shard::Even, Replica::default()), (Shard::Odd, Replica::default())]);
    replicas.get_mut(&Shard::Even).unwrap().rows.insert(RowKey::Product(2), product(5, PRICES[1].1));
    replicas.get_mut(&Shard::Odd).unwrap().rows.insert(RowKey::Product(1), product(5, PRICES[0].1));
    let odd_units = match scenario {
        Scenario::OddRefuses => 9,
        _ => 3,
    };
    let price = |pid: u64| match pricing {
        Pricing::Read => PRICES.iter().find(|(p, _)| *p == pid).expect("a product").1,
        Pricing::Quoted => 0.0,
    };
    let order = OrderRecord {
        cid: 4,
        lines: vec![
            OrderLine { pid: 1, quantity: odd_units, price: price(1) },
            OrderLine { pid: 2, quantity: 2, price: price(2) },
        ],
    };
    let mut even = TxnPart {
        id: ID,
        checks: vec![Check::Absent(RowKey::Order(OID))],
        effects: vec![
            Effect::Put(RowKey::Order(OID), encode_record(&order)),
            Effect::AdjustStock { pid: 2, delta: -2 },
            Effect::Put(RowKey::ProductOrder(2, OID), Vec::new()),
        ],
    };
    let mut odd = TxnPart {
        id: ID,
        checks: vec![],
        effects: vec![
            Effect::AdjustStock { pid: 1, delta: -(odd_units as i64) },
            Effect::Put(RowKey::ProductOrder(1, OID), Vec::new()),
        ],
    };
    match pricing {
        Pricing::Read => {
            even.checks.push(Check::ProductPrice { pid: 2, price: price(2) });
            odd.checks.push(Check::ProductPrice { pid: 1, price: price(1) });
        }
        Pricing::Quoted => {
            even.effects.insert(1, Effect::PriceOrder(OID));
            odd.checks.push(Check::QuotePrice(1));
        }
    }
    let mut world = World {
        replicas,
        step: 0,
        faults: BTreeMap::new(),
        crashed: false,
        late: Vec::new(),
        clock: 1_000,
        racing: false,
        settled: Vec::new(),
        forgotten: BTreeMap::new(),
    };
    if let Scenario::OddFenced = scenario {
        world.deliver(Shard::Odd, Command::Fence { hold_ms: 60_000, at_ms: 0 });
    }
    (world, [(Shard::Even, even), (Shard::Odd, odd)])
}

/// One run: the coordinator, recovery from `first_side` (then the other),
/// late messages, the leaders forgetting what they may, recovery until
/// nothing is prepared; then the checks.
fn run_case(scenario: Scenario, pricing: Pricing, faults: BTreeMap<usize, Fault>, first_side: Shard) {
    let (world, parts) = world(scenario, pricing);
    let network = Network(Mutex::new(World { faults: faults.clone(), ..world }));
    let case = format!("{scenario:?}, {pricing:?} prices, faults {faults:?}, recovery from {first_side} first");
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
    runtime.block_on(async {
        let attempt = run(&network, parts, Shard::Even).await;
        let answered = match network.0.lock().unwrap().crashed {
            true => None,
            false => Some(attempt.clone()),
        };
        if let Attempt::Committed(quoted) = &attempt {
            finish(&network, ID, Outcome::Commit, Shard::ALL, quoted.as_ref()).await;
        }
        // The leaders' recovery, each only while its own part is prepared
        // (that is what its scan finds), with faults still coming.
        for side in [first_side, first_side.other()] {
            network.0.lock().unwrap().crashed = false;
            if network.0.lock().unwrap().prepared(side, ID) {
                let _ = recover(&network, ID).await;
            }
        }
        // The network delivers what it held; recovery goes on, fault-free,
        // until no part is prepared.
        {
            let mut world = network.0.lock().unwrap();
            world.crashed = false;
            world.faults.clear();
            for (shard, command) in std::mem::take(&mut world.late) {
                world.deliver(shard, command);
            }
            world.forget_finished();
        }
        for side in [first_side, first_side.other()] {
            if network.0.lock().unwrap().prepared(side, ID) {
                let outcome = recover(&network, ID).await;
                assert!(outcome.is_ok(), "{case}: fault-free recovery failed: {outcome:?}");
            }
        }
        check(&network.0.lock().unwrap(), answered, &case);
    });
}

fn check(world: &World, answered: Option<Attempt>, case: &str) {
    let states = Shard::ALL.map(|shard| world.last_record(shard));
    let committed = states.iter().map(|s| matches!(s, Some(TxnState::Committed))).collect::<Vec<_>>();
    assert!(!states.iter().any(|s| matches!(s, Some(TxnState::Prepared { .. }))), "{case}: left prepared: {states:?}");
    assert_eq!(committed[0], committed[1], "{case}: one shard committed, the other not: {states:?}");
    for (shard, replica) in &world.replicas {
        let intents: Vec<_> = replica.rows.keys().filter(|k| matches!(k, RowKey::Intent(_))).collect();
        assert!(intents.is_empty(), "{case}: shard {shard} keeps intents {intents:?}");
    }
    let final_outcome = if committed[0] { Outcome::Commit } else { Outcome::Abort };
    assert!(
        world.settled.iter().all(|outcome| *outcome == final_outcome),
        "{case}: a reader would have read {:?} on the way to {final_outcome:?}",
        world.settled
    );
    let order = world.replicas[&Shard::Even].rows.get(&RowKey::Order(OID));
    assert_eq!(order.is_some(), committed[0], "{case}: the order row must exist exactly when committed");
    if let Some(row) = order {
        let order: OrderRecord = decode_record(&row.value).expect("an order");
        let prices: Vec<(u64, f64)> = order.lines.iter().map(|line| (line.pid, line.price)).collect();
        assert_eq!(prices, PRICES, "{case}: the order's prices");
    }
    match committed[0] {
        true => assert_eq!((world.stock(1), world.stock(2)), (2, 3), "{case}: stock after commit"),
        false => assert_eq!((world.stock(1), world.stock(2)), (5, 5), "{case}: stock after abort"),
    }
    match answered {
        Some(Attempt::Committed(_)) => assert!(committed[0], "{case}: the caller was told committed: {states:?}"),
        Some(Attempt::Aborted(_)) => assert!(!committed[0], "{case}: the caller was told aborted: {states:?}"),
        Some(Attempt::Unknown(NoAnswer { maybe_applied: false, .. })) => {
            assert!(!committed[0], "{case}: the caller was told it did not commit: {states:?}")
        }
        Some(Attempt::Unknown(NoAnswer { maybe_applied: true, .. })) | None => {}
    }
}

/// Messages a run sends at most: two prepares, two prevents, two resolves,
/// and recovery's two prevents and two resolves from each side.
const STEPS: usize = 14;

#[test]
fn without_faults_both_prepared_commits_and_a_refusal_aborts() {
    for (scenario, commits) in
        [(Scenario::BothPrepare, true), (Scenario::OddRefuses, false), (Scenario::OddFenced, false)]
    {
        for pricing in PRICINGS {
            let (world, parts) = world(scenario, pricing);
            let network = Network(Mutex::new(world));
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let attempt = runtime.block_on(run(&network, parts, Shard::Even));
            assert_eq!(matches!(attempt, Attempt::Committed(_)), commits, "{scenario:?}: {attempt:?}");
            if let Attempt::Committed(quoted) = attempt {
                let expected =
                    (pricing == Pricing::Quoted).then_some(Quoted { by: Shard::Odd, prices: vec![PRICES[0]] });
                assert_eq!(quoted, expected, "{scenario:?}, {pricing:?}: the prices quoted");
                runtime.block_on(finish(&network, ID, Outcome::Commit, Shard::ALL, quoted.as_ref()));
                assert_eq!(network.0.lock().unwrap().step, 4, "one round of prepares, then the resolves");
            }
            run_case(scenario, pricing, BTreeMap::new(), Shard::Even);
        }
    }
}

#[test]
fn one_fault_at_any_message_leaves_all_or_nothing() {
    for scenario in [Scenario::BothPrepare, Scenario::OddRefuses, Scenario::OddFenced] {
        for step in 0..STEPS {
            for fault in FAULTS {
                for side in Shard::ALL {
                    for pricing in PRICINGS {
                        run_case(scenario, pricing, BTreeMap::from([(step, fault)]), side);
                    }
                }
            }
        }
    }
}

#[test]
fn two_faults_at_any_two_messages_leave_all_or_nothing() {
    let mut runs = 0;
    for scenario in [Scenario::BothPrepare, Scenario::OddRefuses, Scenario::OddFenced] {
        for first in 0..STEPS {
            for second in first + 1..STEPS {
                for a in FAULTS {
                    for b in FAULTS {
                        for side in Shard::ALL {
                            for pricing in PRICINGS {
                                run_case(scenario, pricing, BTreeMap::from([(first, a), (second, b)]), side);
                                runs += 1;
                            }
                        }
                    }
                }
            }
        }
    }
    assert_eq!(runs, 3 * (STEPS * (STEPS - 1) / 2) * FAULTS.len() * FAULTS.len() * 2 * PRICINGS.len());
}

#[test]
fn a_late_prepare_after_prevention_is_refused() {
    // The odd prepare is held in the network; the coordinator, hearing
    // nothing, prevents it and aborts; when it arrives it meets the
    // tombstone and changes nothing.
    let (world, parts) = world(Scenario::BothPrepare, Pricing::Quoted);
    let network = Network(Mutex::new(World { faults: BTreeMap::from([(1, Fault::Late)]), ..world }));
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    runtime.block_on(async {
        let attempt = run(&network, parts, Shard::Even).await;
        assert!(matches!(attempt, Attempt::Aborted(ref refusals) if refusals.is_empty()), "{attempt:?}");
        let mut world = network.0.lock().unwrap();
        let (shard, command) = world.late.pop().expect("the held prepare");
        assert_eq!(world.deliver(shard, command), CommandResult::Aborted(None));
        assert_eq!((world.stock(1), world.stock(2)), (5, 5));
    });
}

/// A transaction committed in the even shard only: its odd resolve was
/// lost, and the odd shard cannot settle its part yet (cut off, say).
fn committed_in_the_even_shard_only() -> (Network, tokio::runtime::Runtime) {
    let (world, parts) = world(Scenario::BothPrepare, Pricing::Quoted);
    let network = Network(Mutex::new(World { faults: BTreeMap::from([(3, Fault::LostRequest)]), ..world }));
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    runtime.block_on(async {
        let Attempt::Committed(quoted) = run(&network, parts, Shard::Even).await else { panic!("not committed") };
        finish(&network, ID, Outcome::Commit, Shard::ALL, quoted.as_ref()).await;
    });
    {
        let mut world = network.0.lock().unwrap();
        assert_eq!(world.record(Shard::Even, ID), Some(TxnState::Committed));
        assert!(world.prepared(Shard::Odd, ID), "the odd part waits");
        world.faults.clear();
    }
    (network, runtime)
}

#[test]
fn a_commit_is_not_forgotten_while_the_other_part_is_prepared() {
    let (network, runtime) = committed_in_the_even_shard_only();
    {
        let mut world = network.0.lock().unwrap();
        world.forget_finished();
        assert_eq!(world.record(Shard::Even, ID), Some(TxnState::Committed), "kept while the odd part waits");
    }
    assert_eq!(runtime.block_on(recover(&network, ID)).unwrap(), Outcome::Commit);
    let mut world = network.0.lock().unwrap();
    check(&world, None, "the committed record kept");
    world.forget_finished();
    assert_eq!(world.record(Shard::Even, ID), None, "forgotten once the odd part finished");
    assert_eq!(world.record(Shard::Odd, ID), None);
}

#[test]
fn forgetting_a_commit_while_the_other_part_is_prepared_would_split_it() {
    // Why `may_forget` exists: the even leader forgets its committed
    // record anyway. The odd side's recovery then finds no record there,
    // prevents the transaction and aborts its part, while the order stays
    // written in the even shard.
    let (network, runtime) = committed_in_the_even_shard_only();
    {
        let mut world = network.0.lock().unwrap();
        assert!(!may_forget(world.record(Shard::Odd, ID).as_ref()));
        world.forget(Shard::Even, TxnState::Committed);
    }
    assert_eq!(runtime.block_on(recover(&network, ID)).unwrap(), Outcome::Abort);
    let world = network.0.lock().unwrap();
    assert!(world.replicas[&Shard::Even].rows.contains_key(&RowKey::Order(OID)), "the order stays written");
    assert_eq!(world.stock(1), 5, "while the odd shard gave its stock back");
}
