// Renders an Ollama TEMPLATE with Go's text/template, the engine Ollama uses.
//
// stdin: {"template": "...", "conversations": [[{"role": "...", "content": "..."}, ...], ...]}
// stdout: a JSON array, the rendered prompt of each conversation.
//
// The values follow Ollama's template package for a template that reads
// .Messages: consecutive messages of one role are merged (joined by a blank
// line), .System is every system message joined the same way, and the template
// is parsed with missingkey=zero. Written for tunelab's tests from reading
// Ollama's template/template.go; it is not Ollama's code.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type Input struct {
	Template      string      `json:"template"`
	Conversations [][]Message `json:"conversations"`
}

func main() {
	var in Input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		fmt.Fprintln(os.Stderr, "input:", err)
		os.Exit(2)
	}
	tmpl, err := template.New("").Option("missingkey=zero").Parse(in.Template)
	if err != nil {
		fmt.Fprintln(os.Stderr, "parse:", err)
		os.Exit(1)
	}
	var out []string
	for _, conversation := range in.Conversations {
		var b strings.Builder
		if err := tmpl.Execute(&b, values(conversation)); err != nil {
			fmt.Fprintln(os.Stderr, "execute:", err)
			os.Exit(1)
		}
		out = append(out, b.String())
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, "output:", err)
		os.Exit(1)
	}
}

// values: what Ollama's template package passes to a template that reads .Messages.
func values(msgs []Message) map[string]any {
	var system []string
	var messages []*Message
	for i := range msgs {
		m := msgs[i]
		if m.Role == "system" {
			system = append(system, m.Content)
		}
		if n := len(messages); n > 0 && messages[n-1].Role == m.Role {
			messages[n-1].Content += "\n\n" + m.Content
		} else {
			messages = append(messages, &m)
		}
	}
	return map[string]any{
		"System":   strings.Join(system, "\n\n"),
		"Messages": messages,
		"Response": "",
	}
}
