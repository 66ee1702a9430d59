//! QEMU's own view of the machine while the kernel holds: a minimal QMP client, a
//! parser for the reply of `query-pci`, and human-monitor commands (`xp` reads of
//! guest-physical memory) run in the same session.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::model::{Bar, BarKind, Bdf, Function, Space};

/// A PCI function's place in QEMU's device tree: what names it (`qdev_id`, the
/// `id=` of its `-device`) and, for bridges, its secondary bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciNode {
    pub bdf: Bdf,
    /// `None` when the device has no `id=` (QEMU reports `""`).
    pub qdev_id: Option<String>,
    /// Base class and subclass (`class_info.class`).
    pub class: u16,
    /// Secondary bus number of a bridge (`pci_bridge.bus.secondary`).
    pub secondary: Option<u8>,
}

/// Everything one `query-pci` told us.
#[derive(Clone, Debug, Default)]
pub struct QueryPci {
    pub functions: Vec<Function>,
    pub nodes: Vec<PciNode>,
    /// The reply, pretty-printed (kept in the scenario folder).
    pub raw_json: String,
    /// Human-monitor commands run after `query-pci`, in the order asked.
    pub monitor: Vec<MonitorReply>,
}

/// One `human-monitor-command` and what QEMU answered (its text, or why not).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MonitorReply {
    pub command: String,
    pub output: Result<String, String>,
}

impl QueryPci {
    /// The reply to `command`, if it was run.
    pub fn monitor_reply(&self, command: &str) -> Option<&Result<String, String>> {
        self.monitor
            .iter()
            .find(|r| r.command == command)
            .map(|r| &r.output)
    }
}

/// Chooses more monitor commands from what was read so far (`query-pci` and the replies
/// in [`QueryPci::monitor`]): for reads whose address is in an earlier reply, such as a
/// table walk (a register, then the entry it points at, ...). Commands already run are
/// not run again; an empty answer (or nothing new) ends the rounds.
pub type FollowUp<'a> = dyn Fn(&QueryPci) -> Vec<String> + 'a;

/// At most this many rounds of [`FollowUp`] commands (a table walk is 3 reads deep).
pub const FOLLOW_UP_ROUNDS: usize = 6;

/// Runs the [`FollowUp`] rounds on `view`: each round, `plan` chooses commands from the
/// replies so far; those not yet run go through `run` (one `human-monitor-command`) and
/// their replies are appended. Stops when a round brings nothing new, or after
/// [`FOLLOW_UP_ROUNDS`].
pub fn follow_up_rounds(
    view: &mut QueryPci,
    plan: &FollowUp<'_>,
    run: &mut dyn FnMut(&str) -> Result<String, String>,
) {
    for _ in 0..FOLLOW_UP_ROUNDS {
        let mut new: Vec<String> = plan(view)
            .into_iter()
            .filter(|c| view.monitor_reply(c).is_none())
            .collect();
        new.dedup();
        if new.is_empty() {
            return;
        }
        for command in new {
            if view.monitor_reply(&command).is_some() {
                continue;
            }
            let output = run(&command);
            view.monitor.push(MonitorReply { command, output });
        }
    }
}

/// Connects to QEMU's QMP socket, negotiates capabilities, runs `query-pci`, then each of `monitor` as a `human-monitor-command` (e.g.
/// `xp /64xb 0x1000`), then the rounds of `follow_up` ([`follow_up_rounds`]); a failing
/// monitor command is recorded, not fatal.
pub fn query(
    socket: &Path,
    timeout: Duration,
    monitor: &[String],
    follow_up: Option<&FollowUp<'_>>,
) -> Result<QueryPci, String> {
    let deadline = Instant::now() + timeout;
    // QEMU creates the socket before the guest starts: retry briefly only.
    let connect_deadline = deadline.min(Instant::now() + Duration::from_secs(2));
    let stream = loop {
        match UnixStream::connect(socket) {
            Ok(s) => break s,
            Err(e) if Instant::now() >= connect_deadline => {
                return Err(format!(
                    "cannot connect to QMP socket {}: {e}",
                    socket.display()
                ));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let remaining = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(100));
    stream
        .set_read_timeout(Some(remaining))
        .and_then(|()| stream.set_write_timeout(Some(remaining)))
        .map_err(|e| format!("QMP socket: {e}"))?;
    let mut writer = stream.try_clone().map_err(|e| format!("QMP socket: {e}"))?;
    let mut reader = BufReader::new(stream);

    let greeting = read_message(&mut reader)?;
    if greeting.get("QMP").is_none() {
        return Err(format!("unexpected QMP greeting: {greeting}"));
    }
    execute(&mut reader, &mut writer, "qmp_capabilities", None)?;
    let reply = execute(&mut reader, &mut writer, "query-pci", None)?;
    let functions = parse_query_pci(&reply)?;
    let nodes = parse_query_pci_nodes(&reply)?;
    let raw_json = serde_json::to_string_pretty(&reply).unwrap_or_else(|_| reply.to_string());
    let mut human = |command: &str| {
        let args = serde_json::json!({ "command-line": command });
        execute(
            &mut reader,
            &mut writer,
            "human-monitor-command",
            Some(args),
        )
        .and_then(|v| match v {
            Value::String(s) => Ok(s),
            other => Err(format!("human-monitor-command returned {other}")),
        })
    };
    let monitor = monitor
        .iter()
        .map(|command| MonitorReply {
            command: command.clone(),
            output: human(command),
        })
        .collect();
    let mut view = QueryPci {
        functions,
        nodes,
        raw_json,
        monitor,
    };
    if let Some(plan) = follow_up {
        follow_up_rounds(&mut view, plan, &mut human);
    }
    Ok(view)
}

fn read_message(reader: &mut impl BufRead) -> Result<Value, String> {
    let mut line = String::new();
    let n = reader
        .read_line(&mut line)
        .map_err(|e| format!("reading QMP: {e}"))?;
    if n == 0 {
        return Err("QMP connection closed".into());
    }
    serde_json::from_str(&line).map_err(|e| format!("QMP sent invalid JSON ({e}): {line:?}"))
}

/// Sends a command and returns its `return` value (asynchronous events are skipped).
fn execute(
    reader: &mut impl BufRead,
    writer: &mut impl Write,
    command: &str,
    arguments: Option<Value>,
) -> Result<Value, String> {
    let request = match arguments {
        Some(a) => serde_json::json!({ "execute": command, "arguments": a }),
        None => serde_json::json!({ "execute": command }),
    };
    writeln!(writer, "{request}")
        .and_then(|()| writer.flush())
        .map_err(|e| format!("sending {command} to QMP: {e}"))?;
    loop {
        let mut msg = read_message(reader)?;
        if let Some(ret) = msg.get_mut("return") {
            return Ok(ret.take());
        }
        if let Some(err) = msg.get("error") {
            return Err(format!("QMP {command} failed: {err}"));
        }
        // {"event": ...}: not ours, keep reading.
    }
}

/// Parses the `return` value of `query-pci`: a list of buses, each with `devices`,
/// bridges holding their secondary bus in `pci_bridge.devices`.
pub fn parse_query_pci(ret: &Value) -> Result<Vec<Function>, String> {
    let buses = ret
        .as_array()
        .ok_or("query-pci: expected a list of buses")?;
    let mut out = Vec::new();
    for (i, bus) in buses.iter().enumerate() {
        let devices = bus
            .get("devices")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("query-pci: bus #{i} has no `devices` list"))?;
        parse_devices(devices, &format!("bus #{i}"), &mut out)?;
    }
    out.sort_by_key(|f| f.bdf);
    Ok(out)
}

/// Parses the names and bridge buses out of the `return` value of `query-pci`
/// (same walk as `parse_query_pci`), sorted by BDF.
pub fn parse_query_pci_nodes(ret: &Value) -> Result<Vec<PciNode>, String> {
    let buses = ret
        .as_array()
        .ok_or("query-pci: expected a list of buses")?;
    let mut out = Vec::new();
    for (i, bus) in buses.iter().enumerate() {
        let devices = bus
            .get("devices")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("query-pci: bus #{i} has no `devices` list"))?;
        walk_nodes(devices, &format!("bus #{i}"), &mut out)?;
    }
    out.sort_by_key(|n| n.bdf);
    Ok(out)
}

fn walk_nodes(devices: &[Value], ctx: &str, out: &mut Vec<PciNode>) -> Result<(), String> {
    for (i, dev) in devices.iter().enumerate() {
        let ctx = format!("{ctx} device #{i}");
        let bdf = Bdf {
            bus: uint(dev, "bus", 0xff, &ctx)? as u8,
            dev: uint(dev, "slot", 0x1f, &ctx)? as u8,
            func: uint(dev, "function", 7, &ctx)? as u8,
        };
        // Missing (older QEMUs), "" (no id=) or odd: the device is just unnamed.
        let qdev_id = dev
            .get("qdev_id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(String::from);
        let class = dev
            .get("class_info")
            .map(|c| uint(c, "class", 0xffff, &ctx))
            .transpose()?
            .ok_or_else(|| format!("query-pci: {ctx} ({bdf}): no `class_info`"))?
            as u16;
        let bridge = dev.get("pci_bridge");
        let secondary = bridge
            .and_then(|b| b.get("bus"))
            .and_then(|b| b.get("secondary"))
            .and_then(Value::as_u64)
            .and_then(|n| u8::try_from(n).ok());
        out.push(PciNode {
            bdf,
            qdev_id,
            class,
            secondary,
        });
        if let Some(children) = bridge.and_then(|b| b.get("devices")) {
            let children = children
                .as_array()
                .ok_or_else(|| format!("query-pci: {ctx}: pci_bridge.devices is not a list"))?;
            walk_nodes(children, &format!("{ctx} (behind bridge)"), out)?;
        }
    }
    Ok(())
}

fn parse_devices(devices: &[Value], ctx: &str, out: &mut Vec<Function>) -> Result<(), String> {
    for (i, dev) in devices.iter().enumerate() {
        let ctx = format!("{ctx} device #{i}");
        out.push(parse_device(dev, &ctx)?);
        if let Some(bridge) = dev.get("pci_bridge") {
            if let Some(children) = bridge.get("devices") {
                let children = children
                    .as_array()
                    .ok_or_else(|| format!("query-pci: {ctx}: pci_bridge.devices is not a list"))?;
                parse_devices(children, &format!("{ctx} (behind bridge)"), out)?;
            }
        }
    }
    Ok(())
}

fn uint(v: &Value, key: &str, max: u64, ctx: &str) -> Result<u64, String> {
    v.get(key)
        .and_then(Value::as_u64)
        .filter(|n| *n <= max)
        .ok_or_else(|| format!("query-pci: {ctx}: `{key}` missing or out of range"))
}

fn parse_device(dev: &Value, ctx: &str) -> Result<Function, String> {
    let bus = uint(dev, "bus", 0xff, ctx)? as u8;
    let slot = uint(dev, "slot", 0x1f, ctx)? as u8;
    let func = uint(dev, "function", 7, ctx)? as u8;
    let ctx = &format!(
        "{ctx} ({})",
        Bdf {
            bus,
            dev: slot,
            func
        }
    );
    let id = dev
        .get("id")
        .ok_or_else(|| format!("query-pci: {ctx}: no `id`"))?;
    let vendor = uint(id, "vendor", 0xffff, ctx)? as u16;
    let device = uint(id, "device", 0xffff, ctx)? as u16;
    let class_info = dev
        .get("class_info")
        .ok_or_else(|| format!("query-pci: {ctx}: no `class_info`"))?;
    let class = uint(class_info, "class", 0xffff, ctx)? as u16;
    let mut bars = Vec::new();
    if let Some(regions) = dev.get("regions") {
        let regions = regions
            .as_array()
            .ok_or_else(|| format!("query-pci: {ctx}: `regions` is not a list"))?;
        for r in regions {
            let index = uint(r, "bar", 6, ctx)? as u8;
            if index == 6 {
                continue; // expansion ROM: not a BAR the kernel lists
            }
            let kind = match r.get("type").and_then(Value::as_str) {
                Some("io") => BarKind::IO,
                Some("memory") => {
                    let flag = |k: &str| r.get(k).and_then(Value::as_bool).unwrap_or(false);
                    BarKind {
                        space: if flag("mem_type_64") {
                            Space::Mem64
                        } else {
                            Space::Mem32
                        },
                        prefetchable: flag("prefetch"),
                    }
                }
                other => {
                    return Err(format!(
                        "query-pci: {ctx}: BAR{index} has unknown type {other:?}"
                    ));
                }
            };
            let address = match r.get("address") {
                // QEMU prints PCI_BAR_UNMAPPED (all ones) as -1 (QAPI int is signed).
                Some(a) if a.as_i64() == Some(-1) || a.as_u64() == Some(u64::MAX) => None,
                Some(a) => Some(a.as_u64().ok_or_else(|| {
                    format!("query-pci: {ctx}: BAR{index} address {a} is not an integer")
                })?),
                None => return Err(format!("query-pci: {ctx}: BAR{index} has no address")),
            };
            let size = uint(r, "size", u64::MAX, ctx)?;
            bars.push(Bar {
                index,
                kind,
                address,
                size,
            });
        }
    }
    bars.sort_by_key(|b| b.index);
    Ok(Function {
        segment: 0,
        bdf: Bdf {
            bus,
            dev: slot,
            func,
        },
        vendor,
        device,
        class,
        prog_if: None,
        bars,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Abridged `query-pci` reply of the `bridges` topology (QEMU 7.2, q35).
    pub const BRIDGES_JSON: &str = r#"[{"bus": 0, "devices": [
      {"bus": 0, "slot": 0, "function": 0, "class_info": {"class": 1536, "desc": "Host bridge"},
       "id": {"device": 10688, "vendor": 32902, "subsystem": 4352, "subsystem-vendor": 6900},
       "irq_pin": 0, "qdev_id": "", "regions": []},
      {"bus": 0, "slot": 2, "function": 0, "class_info": {"class": 1540, "desc": "PCI bridge"},
       "id": {"device": 12, "vendor": 6966},
       "regions": [{"prefetch": false, "mem_type_64": false, "bar": 0, "size": 4096, "address": 4266655744, "type": "memory"}],
       "pci_bridge": {"bus": {"number": 0, "secondary": 1, "subordinate": 3,
                              "io_range": {"base": 49152, "limit": 53247}},
         "devices": [
           {"bus": 1, "slot": 0, "function": 0, "class_info": {"class": 1540},
            "id": {"device": 14, "vendor": 6966},
            "regions": [{"prefetch": true, "mem_type_64": true, "bar": 0, "size": 256, "address": 4259315712, "type": "memory"}],
            "pci_bridge": {"bus": {"number": 1, "secondary": 2, "subordinate": 2},
              "devices": [
                {"bus": 2, "slot": 1, "function": 0, "class_info": {"class": 255},
                 "id": {"device": 4584, "vendor": 4660},
                 "regions": [{"prefetch": false, "mem_type_64": false, "bar": 0, "size": 1048576, "address": -1, "type": "memory"},
                             {"bar": 6, "size": 65536, "address": 4271898624, "type": "memory", "prefetch": false, "mem_type_64": false}]}]}}]}},
      {"bus": 0, "slot": 31, "function": 2, "class_info": {"class": 262, "desc": "SATA controller"},
       "id": {"device": 10530, "vendor": 32902},
       "regions": [{"bar": 5, "size": 4096, "address": 4266668032, "type": "memory", "prefetch": false, "mem_type_64": false},
                   {"bar": 4, "size": 32, "address": 53312, "type": "io"}]}
    ]}]"#;

    #[test]
    fn parses_nested_bridges() {
        let v: Value = serde_json::from_str(BRIDGES_JSON).unwrap();
        let f = parse_query_pci(&v).unwrap();
        let bdfs: Vec<String> = f.iter().map(|f| f.bdf.to_string()).collect();
        assert_eq!(
            bdfs,
            ["00:00.0", "00:02.0", "00:1f.2", "01:00.0", "02:01.0"]
        );
        assert_eq!(
            (f[0].vendor, f[0].device, f[0].class),
            (0x8086, 0x29c0, 0x0600)
        );
        assert!(f[0].bars.is_empty());
        let sata = &f[2];
        assert_eq!(
            sata.bars.iter().map(|b| b.index).collect::<Vec<_>>(),
            [4, 5],
            "sorted by index"
        );
        assert_eq!(
            sata.bars[0],
            Bar {
                index: 4,
                kind: BarKind::IO,
                address: Some(0xd040),
                size: 0x20
            }
        );
        assert_eq!(f[3].bars[0].kind, BarKind::MEM64.pref());
        let edu = &f[4];
        assert_eq!(
            (edu.vendor, edu.device, edu.class),
            (0x1234, 0x11e8, 0x00ff)
        );
        assert_eq!(edu.bars.len(), 1, "the ROM (bar 6) is skipped");
        assert_eq!(edu.bars[0].address, None, "address -1 means unmapped");
    }

    #[test]
    fn parses_names_and_secondary_buses() {
        let v: Value = serde_json::from_str(BRIDGES_JSON).unwrap();
        let nodes = parse_query_pci_nodes(&v).unwrap();
        let summary: Vec<String> = nodes
            .iter()
            .map(|n| {
                format!(
                    "{} {} {:04x} {}",
                    n.bdf,
                    n.qdev_id.as_deref().unwrap_or("-"),
                    n.class,
                    n.secondary.map_or("-".into(), |s| s.to_string())
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                "00:00.0 - 0600 -",
                "00:02.0 - 0604 1",
                "00:1f.2 - 0106 -",
                "01:00.0 - 0604 2",
                "02:01.0 - 00ff -",
            ]
        );
        // qdev ids; odd values are treated as "no id", not as an error.
        let v: Value = serde_json::from_str(
            r#"[{"bus": 0, "devices": [
              {"bus": 0, "slot": 2, "function": 0, "class_info": {"class": 1540}, "qdev_id": "rp1",
               "pci_bridge": {"bus": {"secondary": 300}, "devices": [
                 {"bus": 1, "slot": 0, "function": 0, "class_info": {"class": 255}, "qdev_id": "e1"}]}},
              {"bus": 0, "slot": 3, "function": 0, "class_info": {"class": 255}, "qdev_id": 7}]}]"#,
        )
        .unwrap();
        let nodes = parse_query_pci_nodes(&v).unwrap();
        assert_eq!(nodes[0].qdev_id.as_deref(), Some("rp1"));
        assert_eq!(nodes[0].secondary, None, "300 is no bus number");
        assert_eq!(nodes[1].qdev_id, None);
        assert_eq!(nodes[2].qdev_id.as_deref(), Some("e1"));
        let v: Value =
            serde_json::from_str(r#"[{"devices": [{"bus": 0, "slot": 1, "function": 0}]}]"#)
                .unwrap();
        assert!(
            parse_query_pci_nodes(&v)
                .unwrap_err()
                .contains("no `class_info`")
        );
    }

    #[test]
    fn rejects_malformed_replies() {
        for (json, needle) in [
            (r#"{"bus": 0}"#, "expected a list of buses"),
            (r#"[{"bus": 0}]"#, "no `devices` list"),
            (
                r#"[{"devices": [{"bus": 0, "slot": 40, "function": 0}]}]"#,
                "`slot` missing or out of range",
            ),
            (
                r#"[{"devices": [{"bus": 0, "slot": 1, "function": 0, "class_info": {"class": 1}}]}]"#,
                "no `id`",
            ),
            (
                r#"[{"devices": [{"bus": 0, "slot": 1, "function": 0, "id": {"vendor": 1, "device": 2},
                    "class_info": {"class": 1}, "regions": [{"bar": 0, "type": "rom", "address": 0, "size": 1}]}]}]"#,
                "unknown type",
            ),
        ] {
            let v: Value = serde_json::from_str(json).unwrap();
            let err = parse_query_pci(&v).unwrap_err();
            assert!(err.contains(needle), "{err:?} should contain {needle:?}");
        }
    }

    #[test]
    fn follow_up_rounds_walk_until_nothing_is_new() {
        // A walk: each round reads the address the previous reply named, 3 deep; then
        // the plan keeps asking for what was read already (not run again).
        let plan = |q: &QueryPci| {
            let mut next = vec!["r 0".to_string()];
            for r in &q.monitor {
                if let Ok(out) = &r.output {
                    next.push(format!("r {out}"));
                }
            }
            next.retain(|c| c != "r 3");
            next
        };
        let mut view = QueryPci::default();
        let mut ran = Vec::new();
        follow_up_rounds(&mut view, &plan, &mut |c| {
            ran.push(c.to_string());
            let n: u32 = c[2..].parse().unwrap();
            Ok((n + 1).to_string())
        });
        assert_eq!(ran, ["r 0", "r 1", "r 2"]);
        assert_eq!(view.monitor.len(), 3);
        // A plan that never stops is cut off after FOLLOW_UP_ROUNDS rounds.
        let endless = |q: &QueryPci| vec![format!("r {}", q.monitor.len())];
        let mut view = QueryPci::default();
        follow_up_rounds(&mut view, &endless, &mut |_| Err("no".into()));
        assert_eq!(view.monitor.len(), FOLLOW_UP_ROUNDS);
        assert_eq!(view.monitor_reply("r 0"), Some(&Err("no".to_string())));
    }

    /// A fake QMP server on a socketpair-like Unix socket exercising the client.
    #[test]
    fn qmp_client_handshake() {
        use std::os::unix::net::UnixListener;
        let dir = std::env::temp_dir().join(format!("sluice-qmp-test-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let sock = dir.join("qmp.sock");
        let _ = std::fs::remove_file(&sock);
        let listener = UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            writeln!(
                w,
                r#"{{"QMP": {{"version": {{}}, "capabilities": ["oob"]}}}}"#
            )
            .unwrap();
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("qmp_capabilities"));
            writeln!(w, r#"{{"return": {{}}}}"#).unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("query-pci"));
            writeln!(w, r#"{{"event": "RESUME", "data": {{}}}}"#).unwrap();
            writeln!(w, r#"{{"return": {}}}"#, BRIDGES_JSON.replace('\n', " ")).unwrap();
            // Two monitor commands: one answered, one refused.
            line.clear();
            r.read_line(&mut line).unwrap();
            let req: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(req["execute"], "human-monitor-command");
            assert_eq!(req["arguments"]["command-line"], "xp /2xb 0x1000");
            writeln!(w, r#"{{"return": "0000000000001000: 0x01 0x02\r\n"}}"#).unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            writeln!(
                w,
                r#"{{"error": {{"class": "GenericError", "desc": "no"}}}}"#
            )
            .unwrap();
            // One follow-up read, chosen from the first reply.
            line.clear();
            r.read_line(&mut line).unwrap();
            let req: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(req["arguments"]["command-line"], "xp /1xb 0x102");
            writeln!(w, r#"{{"return": "0000000000000102: 0x07\r\n"}}"#).unwrap();
        });
        let cmds = ["xp /2xb 0x1000".to_string(), "bogus".to_string()];
        // Reads the byte at 0x100 + the second byte of the first reply, once.
        let follow = |q: &QueryPci| match q.monitor_reply("xp /2xb 0x1000") {
            Some(Ok(out)) if out.contains("0x02") => vec!["xp /1xb 0x102".to_string()],
            _ => Vec::new(),
        };
        let q = query(&sock, Duration::from_secs(5), &cmds, Some(&follow)).unwrap();
        server.join().unwrap();
        assert_eq!(
            q.monitor_reply("xp /1xb 0x102"),
            Some(&Ok("0000000000000102: 0x07\r\n".to_string()))
        );
        assert_eq!(q.monitor.len(), 3);
        assert_eq!(q.functions.len(), 5);
        assert_eq!(q.nodes.len(), 5);
        assert!(q.raw_json.contains("Host bridge"));
        assert_eq!(
            q.monitor_reply("xp /2xb 0x1000"),
            Some(&Ok("0000000000001000: 0x01 0x02\r\n".to_string()))
        );
        assert!(
            q.monitor_reply("bogus")
                .unwrap()
                .as_ref()
                .unwrap_err()
                .contains("GenericError")
        );
        assert_eq!(q.monitor_reply("info"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
