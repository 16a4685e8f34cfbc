// promcheck validates Prometheus rule files and PromQL expressions with Prometheus's own packages (the rule-file
// parser `promtool check rules` runs, and the PromQL parser) and says which metrics each expression reads: what
// tests/test_observability.py needs to prove that the dashboard and the alerts name only metrics that exist.
// promtool has no command that lists an expression's metrics. This module also pins the promtool that
// scripts/install.sh builds (the `tool` line in go.mod), so both read PromQL with the same parser.
//
// Input on stdin, JSON: {"rule_files": ["a.yml", ...], "exprs": ["sum(rate(x[5m]))", ...]}
// Output on stdout, JSON: {"rules": [{"file", "group", "name", "expr", "metrics"}],
// "exprs": [{"expr", "metrics", "error"}], "errors": ["..."]}. Exit status 0 even when something is invalid:
// the caller reads "errors" and each expression's "error".
package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"sort"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

type input struct {
	RuleFiles []string `json:"rule_files"`
	Exprs     []string `json:"exprs"`
}

type ruleOut struct {
	File    string   `json:"file"`
	Group   string   `json:"group"`
	Name    string   `json:"name"`
	Expr    string   `json:"expr"`
	Metrics []string `json:"metrics"`
}

type exprOut struct {
	Expr    string   `json:"expr"`
	Metrics []string `json:"metrics"`
	Error   string   `json:"error,omitempty"`
}

type output struct {
	Rules  []ruleOut `json:"rules"`
	Exprs  []exprOut `json:"exprs"`
	Errors []string  `json:"errors"`
}

// metrics lists the metric names an expression selects (every vector and matrix selector's name).
func metrics(p parser.Parser, expr string) ([]string, error) {
	node, err := p.ParseExpr(expr)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	parser.Inspect(node, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			seen[vs.Name] = true
		}
		return nil
	})
	names := []string{}
	for name := range seen {
		names = append(names, name)
	}
	sort.Strings(names)
	return names, nil
}

func main() {
	var in input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		fmt.Fprintln(os.Stderr, "promcheck: reading stdin:", err)
		os.Exit(2)
	}
	p := parser.NewParser(parser.Options{})
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	out := output{Rules: []ruleOut{}, Exprs: []exprOut{}, Errors: []string{}}
	for _, file := range in.RuleFiles {
		groups, errs := rulefmt.ParseFile(file, false, model.UTF8Validation, p, logger)
		for _, err := range errs {
			out.Errors = append(out.Errors, err.Error())
		}
		if groups == nil {
			continue
		}
		for _, group := range groups.Groups {
			for _, rule := range group.Rules {
				name := rule.Alert
				if name == "" {
					name = rule.Record
				}
				names, err := metrics(p, rule.Expr)
				if err != nil {
					out.Errors = append(out.Errors, fmt.Sprintf("%s: %s: %v", file, name, err))
				}
				out.Rules = append(out.Rules, ruleOut{file, group.Name, name, rule.Expr, names})
			}
		}
	}
	for _, expr := range in.Exprs {
		names, err := metrics(p, expr)
		entry := exprOut{Expr: expr, Metrics: names}
		if err != nil {
			entry.Error = err.Error()
		}
		out.Exprs = append(out.Exprs, entry)
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, "promcheck: writing stdout:", err)
		os.Exit(2)
	}
}
