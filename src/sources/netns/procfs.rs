//! Pure parsers for the procfs files this source reads: `/proc/<pid>/net/dev`,
//! `/proc/<pid>/stat` (start time only) and `cgroup.procs`.

pub use crate::sources::ParseError;

/// One direction of one interface, as `/proc/net/dev` counts it. Byte counters are in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DirectionCounters {
    pub bytes: u64,
    pub packets: u64,
    pub errors: u64,
    pub dropped: u64,
    pub fifo: u64,
    /// `frame` on receive, `colls` on transmit.
    pub frame_or_collisions: u64,
    pub compressed: u64,
    /// `multicast` on receive, `carrier` on transmit.
    pub multicast_or_carrier: u64,
}

/// One line of `/proc/net/dev`, in the namespace's own view: `receive` is what the
/// namespace received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceCounters {
    pub name: String,
    pub receive: DirectionCounters,
    pub transmit: DirectionCounters,
}

/// Parses `/proc/<pid>/net/dev`: two header lines, then `name: 16 numbers` per interface.
///
/// The kernel prints the name right-aligned in 6 columns followed by `:`, so a long name
/// touches the first number (`verylongifname0:1234 ...`); names never contain `:` (the kernel
/// refuses them), so the first `:` ends the name.
pub fn parse_net_dev(text: &str) -> Result<Vec<InterfaceCounters>, ParseError> {
    parse_net_dev_wanted(text, |_| true, usize::MAX).map(|dev| dev.interfaces)
}

/// The interfaces of a `net/dev` text that are reported, from [`parse_net_dev_wanted`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetDev {
    /// The first wanted interfaces, in the kernel's order, at most the cap.
    pub interfaces: Vec<InterfaceCounters>,
    /// Wanted interfaces after those: counted, not parsed.
    pub over_cap: usize,
}

/// [`parse_net_dev`] for the interfaces `wanted` accepts, at most `max` of them (the first in
/// the kernel's order); the wanted ones after those are only counted in
/// [`NetDev::over_cap`]. Work and memory are bounded by `max`, whatever the number of lines:
/// a line past the cap costs finding its `:` and one call of `wanted`, nothing is allocated
/// for it.
///
/// Only the lines that become entries are parsed in full, so only they can be malformed
/// counters: a line not wanted, or any line past the cap, is not an error whatever follows
/// its `:`. Before the cap a line without `:` or with an empty name is an error (its name,
/// needed for `wanted`, is unknown); past the cap such a line is neither an error nor counted.
pub fn parse_net_dev_wanted(
    text: &str,
    wanted: impl Fn(&str) -> bool,
    max: usize,
) -> Result<NetDev, ParseError> {
    let mut lines = text.lines().enumerate();
    match (lines.next(), lines.next()) {
        (Some((_, first)), Some((_, second))) if first.contains('|') && second.contains('|') => {}
        _ => return Err(ParseError::at_line(0, "missing the two header lines of /proc/net/dev")),
    }
    let mut out = NetDev::default();
    for (i, line) in lines {
        if out.interfaces.len() >= max {
            match line.split_once(':') {
                Some((name, _)) if !name.trim().is_empty() && wanted(name.trim()) => out.over_cap += 1,
                _ => {}
            }
            continue;
        }
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let (name, rest) = line.split_once(':').ok_or_else(|| {
            ParseError::at_line(line_no, format!("no `:` after the interface name in `{line}`"))
        })?;
        let name = name.trim();
        if name.is_empty() {
            return Err(ParseError::at_line(line_no, "empty interface name"));
        }
        if !wanted(name) {
            continue;
        }
        let mut values = [0u64; 16];
        let mut count = 0;
        for field in rest.split_whitespace() {
            if count == values.len() {
                return Err(ParseError::at_line(line_no, format!("interface {name}: more than 16 counters")));
            }
            values[count] = field.parse().map_err(|_| {
                ParseError::at_line(line_no, format!("interface {name}: counter `{field}` is not a number"))
            })?;
            count += 1;
        }
        if count != values.len() {
            return Err(ParseError::at_line(
                line_no,
                format!("interface {name}: {count} counters, expected 16"),
            ));
        }
        let direction = |v: &[u64]| DirectionCounters {
            bytes: v[0],
            packets: v[1],
            errors: v[2],
            dropped: v[3],
            fifo: v[4],
            frame_or_collisions: v[5],
            compressed: v[6],
            multicast_or_carrier: v[7],
        };
        out.interfaces.push(InterfaceCounters {
            name: name.to_owned(),
            receive: direction(&values[..8]),
            transmit: direction(&values[8..]),
        });
    }
    Ok(out)
}

/// Field 22 of `/proc/<pid>/stat`, the process start time in clock ticks since boot.
///
/// Only compared between processes and with itself (to detect a reused pid), never emitted,
/// so it stays in ticks. `comm` (field 2) may contain spaces and parentheses: the fields are
/// counted from the last `)`.
pub fn parse_stat_starttime(text: &str) -> Result<u64, ParseError> {
    let close = text.rfind(')').ok_or_else(|| ParseError::at_line(1, "no `)` closing the command name"))?;
    // Field 3 (state) is the first after `)`, so field 22 is the 20th.
    let field = text[close + 1..]
        .split_whitespace()
        .nth(19)
        .ok_or_else(|| ParseError::at_line(1, "fewer than 22 fields, no starttime"))?;
    field.parse().map_err(|_| ParseError::at_line(1, format!("starttime `{field}` is not a number")))
}

/// The pids of a `cgroup.procs` file, in file order.
pub fn parse_procs(text: &str) -> Result<Vec<u32>, ParseError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            l.trim().parse().map_err(|_| ParseError::at_line(i + 1, format!("`{}` is not a pid", l.trim())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n";

    #[test]
    fn all_sixteen_columns_land_in_their_fields() {
        let text = format!("{HEADER}  eth0: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n");
        let parsed = parse_net_dev(&text).unwrap();
        assert_eq!(parsed.len(), 1);
        let eth0 = &parsed[0];
        assert_eq!(eth0.name, "eth0");
        assert_eq!(
            eth0.receive,
            DirectionCounters {
                bytes: 1,
                packets: 2,
                errors: 3,
                dropped: 4,
                fifo: 5,
                frame_or_collisions: 6,
                compressed: 7,
                multicast_or_carrier: 8
            }
        );
        assert_eq!(
            eth0.transmit,
            DirectionCounters {
                bytes: 9,
                packets: 10,
                errors: 11,
                dropped: 12,
                fifo: 13,
                frame_or_collisions: 14,
                compressed: 15,
                multicast_or_carrier: 16
            }
        );
    }

    #[test]
    fn a_long_name_touching_the_first_number_and_odd_spacing_parse() {
        // Captured shape: the kernel pads names to 6 columns, long names are not padded.
        let text = format!(
            "{HEADER}    lo:  123456     789    0    0    0     0          0         0   123456     789    0    0    0     0       0          0\n\
             verylongifname0:1234 5 0 0 0 0 0 0 4321 6 0 0 0 0 0 0\n\
             \teth0:\t18446744073709551615   2  0\t1 0 0 0 0 99 3 0 0 0 0 0 0   \n"
        );
        let parsed = parse_net_dev(&text).unwrap();
        let names: Vec<&str> = parsed.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["lo", "verylongifname0", "eth0"]);
        assert_eq!(parsed[0].receive.bytes, 123_456);
        assert_eq!(parsed[0].transmit.packets, 789);
        assert_eq!(parsed[1].receive.bytes, 1234);
        assert_eq!(parsed[1].receive.packets, 5);
        assert_eq!(parsed[1].transmit.bytes, 4321);
        assert_eq!(parsed[2].receive.bytes, u64::MAX);
        assert_eq!(parsed[2].receive.dropped, 1);
        assert_eq!(parsed[2].transmit.bytes, 99);
    }

    #[test]
    fn bytes_are_bytes_not_kilobytes() {
        // The kernel counts octets; a 1500-byte frame is 1500, with no scaling in between.
        let text = format!("{HEADER}eth0: 1500 1 0 0 0 0 0 0 3000 2 0 0 0 0 0 0\n");
        let eth0 = &parse_net_dev(&text).unwrap()[0];
        assert_eq!(eth0.receive.bytes, 1500 * eth0.receive.packets);
        assert_eq!(eth0.transmit.bytes, 1500 * eth0.transmit.packets);
    }

    #[test]
    fn bad_input_is_an_error_naming_line_and_interface() {
        assert!(parse_net_dev("").is_err());
        assert!(parse_net_dev("eth0: 1 2 3\n").is_err(), "no header");
        let short = parse_net_dev(&format!("{HEADER}eth0: 1 2 3\n")).unwrap_err();
        assert!(matches!(short, ParseError::AtLine { line: 3, .. }), "{short:?}");
        let short = short.to_string();
        assert!(short.contains("eth0") && short.contains("3 counters"), "{short}");
        let long = parse_net_dev(&format!("{HEADER}eth0: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17\n"));
        assert!(long.unwrap_err().to_string().contains("more than 16"));
        let nan = parse_net_dev(&format!("{HEADER}eth0: 1 2 3 4 5 6 7 8 9 10 11 x 13 14 15 16\n"));
        assert!(nan.unwrap_err().to_string().contains("`x`"));
        let no_colon = parse_net_dev(&format!("{HEADER}eth0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n"));
        assert!(no_colon.unwrap_err().to_string().contains("no `:`"));
        // Header only: no interfaces is not an error (a namespace with nothing in it).
        assert_eq!(parse_net_dev(HEADER).unwrap(), Vec::new());
    }

    #[test]
    fn past_the_cap_interfaces_are_counted_not_parsed() {
        let mut text = String::from(HEADER);
        for i in 0..10_000 {
            text.push_str(&format!("  dummy{i}: {i} 1 0 0 0 0 0 0 {i} 1 0 0 0 0 0 0\n"));
        }
        let calls = std::cell::Cell::new(0usize);
        let dev = parse_net_dev_wanted(
            &text,
            |name| {
                calls.set(calls.get() + 1);
                name != "dummy1"
            },
            3,
        )
        .unwrap();
        let names: Vec<&str> = dev.interfaces.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["dummy0", "dummy2", "dummy3"], "the first wanted, in the kernel's order");
        assert!(dev.interfaces.capacity() <= 4, "nothing was built past the cap");
        assert_eq!(dev.over_cap, 10_000 - 4, "every wanted interface after the cap is counted");
        assert_eq!(calls.get(), 10_000, "one filter call per line");
        assert_eq!(dev.interfaces[2].receive.bytes, 3);

        // Under the cap it is `parse_net_dev` with a filter.
        let all = parse_net_dev_wanted(&text, |_| true, 10_000).unwrap();
        assert_eq!((all.interfaces.len(), all.over_cap), (10_000, 0));
        assert_eq!(all.interfaces, parse_net_dev(&text).unwrap());
    }

    #[test]
    fn only_lines_that_become_entries_can_be_malformed() {
        let bad = "eth1: 1 2 x\n";
        let good = "eth0: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n";
        // Among the parsed lines, errors as before.
        let err = parse_net_dev_wanted(&format!("{HEADER}{good}{bad}"), |_| true, 2).unwrap_err();
        assert!(matches!(err, ParseError::AtLine { line: 4, .. }), "{err:?}");
        assert!(parse_net_dev_wanted(&format!("{HEADER}no colon\n{good}"), |_| true, 2).is_err());
        // Past the cap: not parsed, so not an error; counted when it has a wanted name.
        let dev = parse_net_dev_wanted(&format!("{HEADER}{good}{bad}no colon\n :1\n"), |_| true, 1).unwrap();
        assert_eq!((dev.interfaces.len(), dev.over_cap), (1, 1));
        // Not wanted: not parsed either.
        let dev = parse_net_dev_wanted(&format!("{HEADER}{bad}{good}"), |n| n != "eth1", 4).unwrap();
        assert_eq!((dev.interfaces.len(), dev.over_cap), (1, 0));
        assert!(parse_net_dev_wanted(HEADER, |_| true, 0).unwrap() == NetDev::default());
        assert!(parse_net_dev_wanted("eth0: 1\n", |_| true, 0).is_err(), "the header is still checked");
    }

    #[test]
    fn starttime_is_field_22_even_with_parentheses_in_comm() {
        let stat = "4242 (we ird) (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 3 4 0 0 20 0 1 0 987654 1000 200 18446744073709551615";
        assert_eq!(parse_stat_starttime(stat).unwrap(), 987_654);
        let stat = "1 (sh) S 0 1 1 0 -1 4194560 100 0 0 0 3 4 0 0 20 0 1 0 17 1000";
        assert_eq!(parse_stat_starttime(stat).unwrap(), 17);
        assert!(parse_stat_starttime("1 (sh) S 0 1").is_err());
        assert!(parse_stat_starttime("1 sh S").is_err());
    }

    #[test]
    fn procs_are_pids_and_garbage_is_an_error() {
        assert_eq!(parse_procs("12\n7\n\n300\n").unwrap(), vec![12, 7, 300]);
        assert_eq!(parse_procs("").unwrap(), Vec::<u32>::new());
        assert!(matches!(parse_procs("12\nabc\n"), Err(ParseError::AtLine { line: 2, .. })));
    }
}
