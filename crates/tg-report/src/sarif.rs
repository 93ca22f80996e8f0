//! SARIF 2.1.0 output: one run, one result per finding, rules collected from the findings.
//!
//! Only the properties code-scanning front ends read are emitted; the schema is
//! <https://docs.oasis-open.org/sarif/sarif/v2.1.0/sarif-v2.1.0.html>.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::{FileReport, Verdict};

fn level(v: Verdict) -> &'static str {
    match v {
        Verdict::Malicious => "error",
        Verdict::Suspicious => "warning",
        Verdict::Inconclusive => "note",
        Verdict::Clean => "none",
    }
}

/// Render a whole run as one SARIF log.
pub fn render(reports: &[FileReport], tool_version: &str) -> Value {
    let mut rules: BTreeMap<&str, &str> = BTreeMap::new();
    let mut results = Vec::new();
    for report in reports {
        for f in &report.findings {
            rules.entry(f.rule.as_str()).or_insert(f.message.as_str());
            let mut message = f.message.clone();
            if let Some(e) = &f.evidence {
                message.push_str(": ");
                message.push_str(e);
            }
            let mut logical = Vec::new();
            if let Some(m) = &f.location.member {
                logical.push(json!({ "fullyQualifiedName": m, "kind": "member" }));
            }
            let mut physical = json!({ "artifactLocation": { "uri": report.path } });
            if let Some(o) = f.location.offset {
                physical["region"] = json!({ "byteOffset": o });
            }
            let mut loc = json!({ "physicalLocation": physical });
            if !logical.is_empty() {
                loc["logicalLocations"] = Value::Array(logical);
            }
            results.push(json!({
                "ruleId": f.rule,
                "level": level(f.verdict),
                "message": { "text": message },
                "locations": [loc],
                "properties": { "verdict": f.verdict.as_str() },
            }));
        }
    }
    let rules: Vec<Value> = rules
        .into_iter()
        .map(|(id, text)| json!({ "id": id, "shortDescription": { "text": text } }))
        .collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": { "driver": {
                "name": "trainguard",
                "version": tool_version,
                "informationUri": "https://example.invalid/trainguard",
                "rules": rules,
            }},
            "results": results,
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Finding, Location};

    #[test]
    fn one_result_per_finding_with_member_and_offset() {
        let mut r = FileReport::new("m.pt", "pytorch-zip");
        r.push(
            Finding::new(
                "TG-PKL-001",
                Verdict::Malicious,
                "dangerous call",
                Location::at(12).within("m/data.pkl"),
            )
            .with_evidence("posix.system('id')"),
        );
        let v = render(&[r], "0.1.0");
        let res = &v["runs"][0]["results"][0];
        assert_eq!(res["ruleId"], "TG-PKL-001");
        assert_eq!(res["level"], "error");
        assert_eq!(
            res["locations"][0]["physicalLocation"]["region"]["byteOffset"],
            12
        );
        assert_eq!(
            res["locations"][0]["logicalLocations"][0]["fullyQualifiedName"],
            "m/data.pkl"
        );
        assert_eq!(
            v["runs"][0]["tool"]["driver"]["rules"][0]["id"],
            "TG-PKL-001"
        );
    }
}
