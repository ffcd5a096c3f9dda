//! The report that puts the scenarios' figures side by side: each row is printed as it is
//! recorded, and the whole table (with targets) at the end of the run.

/// One line of the report.
struct Row {
    figure: String,
    broker: String,
    reference: String,
    ratio: Option<f64>,
    target: Option<Target>,
}

#[derive(Clone, Copy)]
pub(crate) enum Target {
    AtMost(f64),
    AtLeast(f64),
}

impl Target {
    fn met(self, r: f64) -> bool {
        match self {
            Target::AtMost(t) => r <= t,
            Target::AtLeast(t) => r >= t,
        }
    }

    fn show(self) -> String {
        match self {
            Target::AtMost(t) => format!("≤ {t}"),
            Target::AtLeast(t) => format!("≥ {t}"),
        }
    }
}

#[derive(Default)]
pub(crate) struct Report {
    rows: Vec<Row>,
}

impl Report {
    pub(crate) fn row(
        &mut self,
        figure: impl Into<String>,
        broker: impl Into<String>,
        reference: impl Into<String>,
        ratio: Option<f64>,
        target: Option<Target>,
    ) {
        let row = Row {
            figure: figure.into(),
            broker: broker.into(),
            reference: reference.into(),
            ratio,
            target,
        };
        println!(
            "  {} | {} | {} | {}",
            row.figure,
            row.broker,
            row.reference,
            row.ratio.map_or("-".into(), |r| format!("{r:.2}×"))
        );
        self.rows.push(row);
    }

    pub(crate) fn print(&self) {
        println!();
        println!("| figure | lockbroker | reference | ratio | target | met |");
        println!("|---|---|---|---|---|---|");
        for r in &self.rows {
            let ratio = r.ratio.map_or("-".into(), |x| format!("{x:.2}×"));
            let (target, met) = match (r.target, r.ratio) {
                (Some(t), Some(x)) => (t.show(), if t.met(x) { "yes" } else { "**no**" }),
                (Some(t), None) => (t.show(), "?"),
                _ => ("".into(), ""),
            };
            println!(
                "| {} | {} | {} | {} | {} | {} |",
                r.figure, r.broker, r.reference, ratio, target, met
            );
        }
    }
}
