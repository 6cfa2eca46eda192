//! Column layout for the tables the CLI prints: plain text, one line per row,
//! each column as wide as its widest cell, so the output reads well in a
//! terminal and splits cleanly with `awk`.

/// How a column's cells line up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    /// Text: names, addresses, roles.
    Left,
    /// Numbers, so their digits line up.
    Right,
}

/// One column of a table.
#[derive(Clone, Copy, Debug)]
pub struct Column {
    /// The heading, also the column's minimum width.
    pub title: &'static str,
    /// How the heading and the cells line up.
    pub align: Align,
}

/// Space between two columns.
const GAP: &str = "  ";

/// The table as text: a heading line, then one line per row, every line
/// ending in a newline and none with trailing spaces.
pub fn render(columns: &[Column], rows: &[Vec<String>]) -> String {
    assert!(rows.iter().all(|row| row.len() == columns.len()), "every row has one cell per column");
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| rows.iter().map(|row| row[i].chars().count()).fold(columns[i].title.len(), usize::max))
        .collect();
    let headings: Vec<String> = columns.iter().map(|c| c.title.to_owned()).collect();
    std::iter::once(&headings).chain(rows).map(|row| render_row(columns, &widths, row) + "\n").collect()
}

/// One line of cells, each padded to its column's width.
fn render_row(columns: &[Column], widths: &[usize], cells: &[String]) -> String {
    let padded: Vec<String> = cells
        .iter()
        .zip(columns.iter().zip(widths))
        .map(|(cell, (column, &width))| match column.align {
            Align::Left => format!("{cell:<width$}"),
            Align::Right => format!("{cell:>width$}"),
        })
        .collect();
    padded.join(GAP).trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const COLUMNS: [Column; 2] =
        [Column { title: "name", align: Align::Left }, Column { title: "n", align: Align::Right }];

    fn row(cells: &[&str]) -> Vec<String> {
        cells.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn columns_fit_their_widest_cell_and_numbers_align_right() {
        let text = render(&COLUMNS, &[row(&["a", "7"]), row(&["longer", "1234"])]);
        assert_eq!(text, "name       n\na          7\nlonger  1234\n");
    }

    #[test]
    fn headings_set_the_minimum_width_and_no_line_has_trailing_spaces() {
        let text = render(&COLUMNS, &[row(&["a", ""])]);
        assert_eq!(text, "name  n\na\n");
    }

    #[test]
    fn an_empty_table_is_its_heading() {
        assert_eq!(render(&COLUMNS, &[]), "name  n\n");
    }

    #[test]
    #[should_panic(expected = "one cell per column")]
    fn ragged_rows_are_a_bug() {
        render(&COLUMNS, &[row(&["a"])]);
    }
}
